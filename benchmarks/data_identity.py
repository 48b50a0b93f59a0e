"""Whether a refactor changed the data: run ingest to tokenize over fixed inputs and write the
SHA-256 of every data file (by stage and path inside its output) and each manifest's counts.

Run it at the old commit and at the new one (the same script, the checkout's code on PYTHONPATH),
then compare the two JSON files with --compare. Fingerprints may differ (they hash the code);
the bytes of data/ and removed/ and the counts must not.

    # once: a demo crawl, kept as fixed input (WARC records carry the crawl date)
    python benchmarks/data_identity.py crawl-demo /tmp/ident/demo-warc
    PYTHONPATH=OLD python benchmarks/data_identity.py run /tmp/ident/old /tmp/ident/demo-warc ../shared/data/warc
    PYTHONPATH=NEW python benchmarks/data_identity.py run /tmp/ident/new /tmp/ident/demo-warc ../shared/data/warc
    python benchmarks/data_identity.py compare /tmp/ident/old/hashes.json /tmp/ident/new/hashes.json
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

DATA_STAGES = (
    "ingest",
    "dedup-signatures",
    "dedup-pairs",
    "dedup-clusters",
    "dedup",
    "quality",
    "pii",
    "tokenizer",
    "tokenize",
)
SMALL_TOKENIZE = {"vocab_size": 4096, "sample_chars": 8_000_000}


HOME = os.environ.get("CRAWL2LLM_IDENTITY_HOME", "/tmp/crawl2llm-identity-prefect")  # one server for every run


def cli(args: list[str], home: str = HOME) -> None:
    env = {**os.environ, "PREFECT_HOME": home, "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    subprocess.run([sys.executable, "-m", "flows.cli", *args], check=True, env=env)


def crawl_demo(out: Path) -> None:
    """The demo's crawl of the pydoc site, its WARC files copied to `out`."""
    from flows.demo import pydoc_site

    work = Path(tempfile.mkdtemp())
    with pydoc_site() as seed:
        crawl = {
            "seeds": [seed],
            "max_pages": 300,
            "max_depth": 3,
            "pages_per_file": 40,
            "exclude_patterns": [
                r"/(antigravity|this|idlelib|tkinter|turtle|turtledemo|test|lib2to3|ensurepip|"
                r"venv|pydoc_data)[./]",
                r"[?&]key=.*(search|get)",
            ],
        }
        (work / "crawl.yaml").write_text(yaml.safe_dump(crawl))
        cli(["crawl", *crawl["seeds"], "--config", str(work / "crawl.yaml"), "--store", str(work / "store")])
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted((work / "store" / "crawl").glob("*/data/*")):
        shutil.copy(f, out / f.name)
    print(f"{len(list(out.iterdir()))} WARC files in {out}")


def run(root: Path, inputs: list[str]) -> None:
    """One store per input set, ingest to tokenize with the demo's settings; hashes.json in root."""
    root.mkdir(parents=True, exist_ok=True)
    result = {}
    for inp in inputs:
        name = Path(inp).name.replace("*", "all")
        store = root / name
        config = {
            "store": str(store),
            "inputs": [str(Path(inp).resolve())],
            "stop_after": "tokenize",
            "ingest": {"shard_bytes": 256 << 10},
            "tokenize": SMALL_TOKENIZE,
        }
        (root / f"{name}.yaml").write_text(yaml.safe_dump(config))
        cli(["run", str(root / f"{name}.yaml")])
        result[name] = hashes(store)
    cli(["server", "stop"])
    (root / "hashes.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    print(f"{root / 'hashes.json'}: {sum(len(v['files']) for v in result.values())} data files")


def hashes(store: Path) -> dict:
    files, counts = {}, {}
    for stage in DATA_STAGES:
        outs = sorted((store / stage).glob("*/manifest.json"))
        if len(outs) != 1:
            raise SystemExit(f"{store / stage}: {len(outs)} outputs, expected one")
        out = outs[0].parent
        counts[stage] = json.loads(outs[0].read_text()).get("counts", {})
        for f in sorted(out.rglob("*")):
            rel = f.relative_to(out).as_posix()
            if f.is_file() and rel.split("/")[0] in ("data", "removed"):
                files[f"{stage}/{rel}"] = hashlib.sha256(f.read_bytes()).hexdigest()
    return {"files": files, "counts": counts}


def compare(a_path: str, b_path: str) -> int:
    a, b = json.loads(Path(a_path).read_text()), json.loads(Path(b_path).read_text())
    bad = 0
    for name in sorted(set(a) | set(b)):
        fa, fb = a.get(name, {}).get("files", {}), b.get(name, {}).get("files", {})
        diff = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
        cdiff = sorted(
            s
            for s in DATA_STAGES
            if a.get(name, {}).get("counts", {}).get(s) != b.get(name, {}).get("counts", {}).get(s)
        )
        print(f"{name}: {len(fa)} vs {len(fb)} data files, {len(diff)} differ; counts differ in {cdiff or 'none'}")
        for k in diff[:20]:
            print(f"  {k}: {fa.get(k, '-')[:12]} vs {fb.get(k, '-')[:12]}")
        bad += len(diff) + len(cdiff)
    print("identical" if not bad else f"{bad} differences")
    return 1 if bad else 0


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    if cmd == "crawl-demo":
        crawl_demo(Path(rest[0]))
    elif cmd == "run":
        run(Path(rest[0]), rest[1:])
    elif cmd == "compare":
        raise SystemExit(compare(*rest))
    else:
        raise SystemExit(__doc__)
