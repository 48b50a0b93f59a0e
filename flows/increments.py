"""Incremental re-runs (PipelineConfig.incremental): a run takes only the input files that are new
since the last run, as one more increment, and trains on the token shards of every increment.

The ledger (storage/ledger.py) records each increment's files before any of its work and never
changes them. Increment k's outputs are then ordinary stage outputs, named by fingerprints that
follow from the ledger and the config alone:

    ingest_k    ingest of its files
    dedup_k     dedup of ingest_k with previous=dedup_{k-1}: checked against all earlier kept docs
    quality_k, pii_k
    tokenize_k  encoded with increment 0's tokenizer, so token ids agree across increments
    corpus      a tokenize output listing every increment's shards (train and evaluate read it)

Increment 0 is exactly a plain pipeline run over its files. A stage output that is committed is
not run again, so a run with no new files starts no stage and a killed run finishes only what is
missing, with the same bytes.
"""

from __future__ import annotations

import time

from prefect import get_run_logger

from flows import artifacts, stages
from flows.config import STAGES, PipelineConfig
from flows.training import evaluate, train
from flows.workers import on_cluster
from pipeline.inputs import InputError, NoInputFiles, refuse_credentials, resolve_inputs
from pipeline.plan import plan
from pipeline.stage import merge_counts
from pipeline.stage_table import BY_NAME, PER_INCREMENT, TABLE, load, previous
from pipeline.tokenize import shard_order
from storage import StageDir, Store, canonical_json, file_identity, fingerprint
from storage.ledger import Ledger, series_key
from storage.manifest import tokenize_manifest
from storage.verify import damaged_shards


def run_incremental(config: PipelineConfig) -> dict:
    """Record the new input files as an increment, finish every increment that is not complete, then
    train and evaluate on all of them."""
    log = get_run_logger()
    t0 = time.monotonic()
    series = series_key(config.inputs, config.cc_base_url)
    ledger = Ledger(Store(config.store), series)
    series_artifact = artifacts.store_key(config.store, f"increments-{series[:12]}")
    refuse_credentials(config.inputs, config.cc_base_url)  # not "nothing new" below: an error to fix
    try:
        files = resolve_inputs(config.inputs, config.input_limit, config.cc_base_url)
    except InputError as e:
        if not ledger.records():
            if not isinstance(e, NoInputFiles):  # a file that is not there: a mistake, not an empty night
                raise
            log.warning("nothing to do yet (%s): a later run takes the files that land there", e)
            artifacts.markdown(
                f"# Incremental runs\n\nNo input files yet ({e}): nothing to do. A later run of this "
                "series takes the files that land there.",
                series_artifact,
                "incremental runs of this series in this store",
            )
            return {"increments": {"count": 0, "new_files": [], "ran": []}}
        log.warning("no input files now (%s): nothing new; finished increments do not need theirs", e)
        files = []
    current = [file_identity(f.url, f.name) for f in files]
    records, new = ledger.add(current)
    log.info("incremental: %d increment(s), %d new file(s)", len(records), len(new))
    plans = plan(config, records)
    last = STAGES.index(config.stop_after)
    wanted = [s for s in PER_INCREMENT if STAGES.index(s) <= last]
    ran: list[dict[str, dict]] = []
    for k, (rec, p) in enumerate(zip(records, plans)):
        missing = [s for s in wanted if not _intact(p[s], log)]
        todo = wanted[wanted.index(missing[0]) :] if missing else []
        ran.append(run_stages(k, plans, todo, config, rec["files"], current) if todo else {})
    _publish(records, plans, ran, series_artifact)
    latest, done = plans[-1], ran[-1]
    results = {s: done.get(s) or stages.summary(latest[s], latest[s].read_manifest(), True) for s in wanted}
    results["increments"] = {
        "count": len(records),
        "new_files": [f["url"] for f in new],
        "ran": [k for k, r in enumerate(ran) if r],
    }
    if "tokenize" in wanted:
        results["corpus"] = union(config, [p["tokenize"] for p in plans]) if len(plans) > 1 else results["tokenize"]
        if STAGES.index("train") <= last:
            results["train"] = train(results["corpus"]["url"], config.train)
        if STAGES.index("evaluate") <= last:
            results["evaluate"] = evaluate(results["train"]["url"], config.evaluate)
        results.update(run_post_training(config, results.get("train"), last))
    # the latest increment's stages, then what all increments make together
    artifacts.pipeline_summary({k: v for k, v in results.items() if k != "increments"}, {}, time.monotonic() - t0)
    return results


def run_post_training(config: PipelineConfig, trained: dict | None, last: int, run=None) -> dict[str, dict]:
    """The stages after evaluate that the config gives (sft, classify, dpo: None leaves one out), up to
    stop_after, each on the first model of its starts_from this run made (dpo: the sft output when
    sft ran, else the trained model)."""
    done = {}
    for stage in TABLE[TABLE.index(BY_NAME["evaluate"]) + 1 :]:
        cfg = getattr(config, stage.name)
        if trained is not None and cfg is not None and STAGES.index(stage.name) <= last:
            made = {"train": trained, **done}
            source = next(made[name] for name in stage.starts_from if name in made)
            done[stage.name] = (run or call)(stage.name, load(stage.flow_entrypoint), source["url"], cfg)
    return done


def _intact(out: StageDir, log) -> bool:
    """Whether a stage output is committed and every file its shards recorded is there at its size
    (one listing: cheap on object stores too; bit flips are what `crawl2llm verify` finds). A damaged
    output's stage flow runs again and redoes the damaged shards."""
    if not out.is_committed():
        return False
    damaged = damaged_shards(out, crc=False)
    for i, problems in damaged.items():
        log.warning(
            "%s %s shard %d: %s: running the stage again", out.name, out.fingerprint[:16], i, "; ".join(problems)
        )
    return not damaged


def call(name: str, stage_flow, *args) -> dict:
    """Run a stage flow as it is (the plain pipeline passes one that names it after its run)."""
    return stage_flow(*args)


def run_stages(
    k: int,
    plans: list[dict[str, StageDir]],
    todo: list[str],
    config: PipelineConfig,
    files: list[dict] | None = None,
    current: list[dict] | None = None,
    run=call,
    inputs: list[str] | None = None,
) -> dict[str, dict]:
    """Run increment k's stages `todo` in table order, on the Dask cluster when the config names one;
    each must land where planned. `files`: the increment's input files as the ledger recorded them
    (None: every input, a plain run); `current`: the identities of the input files there now;
    `inputs`: what ingest reads (default: the config's inputs; a plain run's crawl output)."""
    p, w, out = plans[k], config.workers, {}

    def wrap(stage_flow):
        return on_cluster(stage_flow, config.dask_address)

    for stage in todo:
        if stage == "ingest":
            if files is not None and current is not None:
                have = {canonical_json(f) for f in current}
                gone = [f["url"] for f in files if canonical_json(f) not in have]
                if gone:
                    raise InputError(
                        f"increment {k} holds input files that changed or are gone since it was recorded: "
                        f"{', '.join(gone)}; restore them to finish it"
                    )
            args = (
                inputs or config.inputs,
                config.ingest,
                config.store,
                w,
                config.input_limit,
                config.cc_base_url,
                files,
            )
        elif stage == "dedup":
            args = (p[previous(stage)].url(), config.dedup, w, plans[k - 1]["dedup"].url() if k else None)
        elif stage == "tokenize":
            args = (p[previous(stage)].url(), config.tokenize, w, plans[0]["tokenizer"].url() if k else None)
        else:
            args = (p[previous(stage)].url(), getattr(config, stage), w)
        r = run(stage, wrap(getattr(stages, stage)), *args)
        if r["fingerprint"] != p[stage].fingerprint:
            raise RuntimeError(f"increment {k}: {stage} wrote {r['url']}, planned {p[stage].url()}")
        out[stage] = r
    return out


def union(config: PipelineConfig, toks: list[StageDir]) -> dict:
    """A tokenize output holding every increment's token shards (paths into their folders), in a
    seeded order over all of them (a flow's summary of it)."""
    code = BY_NAME["tokenize"].code_version()
    upstream = {"increments": [t.fingerprint for t in toks]}
    out = toks[0].store.stage("tokenize", fingerprint("tokenize", code, config.tokenize, upstream))
    if out.is_committed():
        return stages.summary(out, out.read_manifest(), True)
    first = toks[0].read_manifest()
    shards, counts = [], {}
    for k, tok in enumerate(toks):
        m = tok.read_manifest()
        for s in m["shards"]:
            shards.append(
                {
                    "index": len(shards),
                    "increment": k,
                    "shard": s["index"],
                    **{kind: f"../{tok.fingerprint}/{s[kind]}" for kind in ("train", "val")},
                }
            )
        counts = merge_counts(counts, m["counts"])
    order = shard_order(range(len(shards)), config.tokenize.seed)
    manifest = out.commit(
        tokenize_manifest(
            config.tokenize, code, upstream, first["tokenizer"], first["vocab_size"], order, shards, counts
        )
    )
    return stages.summary(out, manifest, False)


def _publish(records: list[dict], plans: list[dict[str, StageDir]], ran: list[dict], artifact_key: str) -> None:
    """One row per increment: its files, what dedup kept and removed, and whether this run did it."""
    rows = []
    for rec, p, r in zip(records, plans, ran):
        manifest = p["dedup"].read_manifest() if p["dedup"].is_committed() else {}
        counts, lsh = manifest.get("counts", {}), manifest.get("lsh", {})
        rows.append(
            {
                "increment": rec["index"],
                "files": len(rec["files"]),
                "docs_in": counts.get("docs_in"),
                "docs_kept": counts.get("docs_kept"),
                "duplicates_of_earlier": lsh.get("duplicates_of_earlier"),
                "this_run": ", ".join(r) if r else "cached",
            }
        )
    artifacts.table(rows, artifact_key, "incremental runs of this series in this store: one row per increment")
