"""The artifact store: fingerprints, atomic shard commits and manifests on any fsspec filesystem."""

from storage.fingerprint import canonical_json, code_version, file_identity, fingerprint
from storage.store import StageDir, Store, StoreError, is_local, open_stage, protocol

__all__ = [
    "StageDir",
    "Store",
    "StoreError",
    "canonical_json",
    "code_version",
    "file_identity",
    "fingerprint",
    "is_local",
    "open_stage",
    "protocol",
]
