"""The offline demo: crawl Python's own documentation server on localhost, run every stage, train a
tiny GPT on the CPU, print the evaluation and where every artifact is.

pydoc's pages are real English prose written by Python's authors, present wherever Python is, so
the demo needs nothing from outside the machine. The server runs the base interpreter with no
site-packages (-I -S), so only the standard library is documented.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DEMO_PORT = 8765
# Modules whose import opens windows or browsers, or documents Python's own test suite.
SKIP = r"/(antigravity|this|idlelib|tkinter|turtle|turtledemo|test|lib2to3|ensurepip|venv|pydoc_data)[./]"


@contextlib.contextmanager
def pydoc_site(port: int = DEMO_PORT):
    """Serve the standard library's documentation on 127.0.0.1:port for the length of the block."""
    base = getattr(sys, "_base_executable", sys.executable)
    proc = subprocess.Popen(
        [base, "-I", "-S", "-m", "pydoc", "-n", "127.0.0.1", "-p", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pydoc server did not start on port {port} (is the port taken?)") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def demo_config(store: str, seed: str, pages: int | None = None, steps: int | None = None):
    """Small enough for 2 CPU cores in a few minutes, every stage real."""
    from flows.config import PipelineConfig

    return PipelineConfig.model_validate(
        {
            "store": store,
            "crawl": {
                "seeds": [seed],
                "max_pages": pages or 300,
                "max_depth": 3,
                "pages_per_file": 40,
                "exclude_patterns": [SKIP, r"[?&]key=.*(search|get)"],
            },
            "ingest": {"shard_bytes": 256 << 10},  # a few shards of the small crawl, so both cores work
            "tokenize": {"vocab_size": 4096, "sample_chars": 8_000_000},
            "train": {
                "model": {"block_size": 128, "n_layer": 4, "n_head": 4, "n_embd": 128},
                "optimizer": {"learning_rate": 3e-3},
                "schedule": {"max_steps": steps or 600, "warmup_steps": 30},
                "data": {"batch_size": 16},
                "eval": {"interval": 150, "batches": 10},
                "checkpoint": {"interval": 100},
            },
            "evaluate": {"max_new_tokens": 40, "val_batches": 40},
        }
    )


def run_demo(store: str, home: Path, pages: int | None = None, steps: int | None = None) -> int:
    from flows import prefect_env

    t0 = time.monotonic()
    ui = prefect_env.ensure_server(home).removesuffix("/api")
    print(
        f"Prefect UI: {ui}  (left running; `crawl2llm server stop` stops it; sign in: "
        f"{prefect_env.login_url(ui, prefect_env.auth_string(home))})",
        flush=True,
    )
    from flows.pipeline import pipeline

    with pydoc_site() as seed:
        config = demo_config(str(Path(store).resolve()) if "://" not in store else store, seed, pages, steps)
        results = pipeline(config)
    print(report(results, time.monotonic() - t0, ui))
    return 0


def report(results: dict, seconds: float, ui: str) -> str:
    lines = ["", "crawl2llm demo", "=" * 72]
    for name, r in results.items():
        c = r.get("counts", {})
        what = ", ".join(
            f"{k}={_num(c[k])}"
            for k in (
                "pages",
                "docs_in",
                "docs_kept",
                "train_tokens",
                "val_tokens",
                "steps",
                "final_val_loss",
                "val_loss",
                "perplexity",
            )
            if k in c
        )
        lines.append(f"{name:<9} {'cached' if r.get('cached') else 'ran   '}  {what}")
        lines.append(f"{'':<9} {r['url']}")
    ev = results.get("evaluate", {}).get("counts", {})
    if ev:
        lines += ["", "Evaluation", "-" * 72]
        for k in ("val_loss", "perplexity", "bits_per_byte", "val_tokens"):
            if k in ev:
                lines.append(f"{k:<14} {_num(ev[k])}")
        for s in ev.get("samples", [])[:3]:
            lines += ["", f"> {s['prompt']}{s['completion']}"]
    lines += ["", f"Prefect UI with every run and artifact: {ui}", f"Total time: {seconds:.0f} s"]
    return "\n".join(lines)


def _num(value):
    """Floats to 4 significant digits, so the report reads as numbers, not float noise."""
    return f"{value:.4g}" if isinstance(value, float) else value
