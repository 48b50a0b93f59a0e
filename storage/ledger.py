"""Which input files each increment of an incremental series took, in the order they arrived.

A series is one store and one `inputs` setting (e.g. a folder that new crawl files land in). Each
increment is one JSON record, `{store}/increments/{series}/records/part-NNNNN.json`, holding the
identities (storage.file_identity) of the files that were new when it was recorded. A record is
created once, before any of its work, and never rewritten: every output of an increment is a
function of the records, so a killed run's next run finishes exactly the same increment, and a
file that changes in place (a new identity) counts as a new file.
"""

from __future__ import annotations

import json

from storage.fingerprint import canonical_json, fingerprint
from storage.locations import strip_secrets
from storage.store import StageDir, Store, StoreError


def series_key(inputs: list[str], cc_base_url: str) -> str:
    """A series is named by its inputs as the user wrote them (a glob, a folder, a listing), less any
    URL secrets: a re-signed presigned URL continues its series."""
    return fingerprint(
        "increments",
        "",
        {"inputs": [strip_secrets(i) for i in inputs], "cc_base_url": strip_secrets(cc_base_url)},
        None,
    )


class Ledger:
    def __init__(self, store: Store, series: str):
        self.dir = store.stage("increments", series)

    def records(self) -> list[dict]:
        records = [self.dir.read_json(rel) for rel in self.dir.list("records")]
        for i, rec in enumerate(records):
            if rec.get("index") != i:
                raise StoreError(f"ledger {self.dir.url()} has no record {i} (found {rec.get('index')})")
        return records

    def add(self, identities: list[dict]) -> tuple[list[dict], list[dict]]:
        """Record the files that no increment holds yet as the next increment. Returns every record
        and the newly recorded files (empty: nothing new)."""
        while True:
            records = self.records()
            seen = {canonical_json(f) for rec in records for f in rec["files"]}
            new = list({canonical_json(f): f for f in identities if canonical_json(f) not in seen}.values())
            if not new:
                return records, []
            rec = {"index": len(records), "files": new}
            body = (json.dumps(rec, indent=2, sort_keys=True) + "\n").encode()
            if self.dir.write_once(StageDir.part("records", rec["index"], "json"), body):
                return records + [rec], new
            # another run recorded this increment first: read it and look again
