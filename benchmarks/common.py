"""What the benchmark scripts share: where the data is, the machine a result was measured on, CPU time,
core pinning, peak memory, and the tables and JSON lines docs/BENCHMARKS.md quotes.

A script run as `python benchmarks/X.py` has benchmarks/ first on sys.path, so `import common` needs
no path line. Importing it puts the repository root first too, so the script reads this checkout's
packages (and tests/fixtures/) whether or not the project is installed: the GPU machine runs the
scripts from a bare checkout (benchmarks/gpu_checks.sh). isort sorts `common` among the third-party
imports, before the project's own, which is the order this needs.
"""

from __future__ import annotations

import os
import platform
import resource
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DATA = os.environ.get("CRAWL2LLM_DATA", os.path.join(ROOT, "..", "shared", "data"))
HELLASWAG = os.path.join(DATA, "eval", "hellaswag_val.klosax-preprocessed.jsonl.gz")  # the HellaSwag benchmarks' file


def machine() -> dict:
    """CPU model, cores, memory, Python and OS: printed with every recorded result."""
    model = "?"
    if os.path.exists("/proc/cpuinfo"):
        model = next(
            (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?"
        )
    mem = "?"
    if os.path.exists("/proc/meminfo"):
        kib = int(open("/proc/meminfo").readline().split()[1])
        mem = f"{kib / 2**20:.1f} GiB"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory": mem,
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def pin(core: int | None) -> bool:
    """Pin this process (and the children it starts later) to one core; False where that is not possible."""
    if core is None or not hasattr(os, "sched_setaffinity"):
        return False
    os.sched_setaffinity(0, {core})
    return True


def cpu_seconds(who: int) -> float:
    """User + system CPU seconds of resource.RUSAGE_SELF or RUSAGE_CHILDREN."""
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def vm_hwm_kib() -> int:
    """Peak resident set of this process in KiB (VmHWM; ru_maxrss where there is no /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def markdown_table(header: list[str], rows: list[list]) -> str:
    """The benchmarks' result tables, as docs/BENCHMARKS.md quotes them."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def tidy(value):
    """Floats rounded to 3 decimals, recursively (for the JSON line)."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: tidy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [tidy(v) for v in value]
    return value
