"""Training in several processes: the entry point torchrun starts in each, and the parent side that
starts torchrun and follows the run.

    torchrun --nproc-per-node=2 -m model.launch --args-json run.json

run.json holds the function to run and its arguments: {"entry": "model.train:train", "config_class":
"model.train:TrainConfig", "args": [the arguments before the config: train_files, val_files,
vocab_size for train(); base model and tokenizer for model.sft:sft and model.dpo:dpo], "config":
{the config, nested by group}, "out_dir": "...", "stop_after": null, "events": null, "kwargs": {more
keyword arguments}}. Rank 0 writes
one JSON object per line: {"log": event} for each train() log event, then {"result": summary}; to
the file named by "events" when given (launch() follows it there: it is in out_dir, which every
machine must share, whichever machine rank 0 lands on), else to stdout.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Callable, Optional

from torch.distributed.elastic.multiprocessing.errors import record

from model import distributed
from model.gpt import resolve_device
from model.train import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_DIR = "launch"  # under out_dir: run.json, events.jsonl, torchrun.log


@record  # torchrun's failure summary then names the failing rank's exception
def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="One process of a torchrun training run.")
    parser.add_argument("--args-json", required=True, help="train()'s arguments (see the module doc)")
    with open(parser.parse_args(argv).args_json) as f:
        a = json.load(f)
    config = _load(a.get("config_class", TRAIN[1])).model_validate(a["config"])
    args = a["args"] if "args" in a else [a["train_files"], a["val_files"], a["vocab_size"]]
    distributed.setup(resolve_device(config.launch.device))
    ok = False
    try:
        emit = _emitter(a.get("events")) if distributed.is_main() else None
        summary = _load(a.get("entry", TRAIN[0]))(
            *args,
            config,
            a["out_dir"],
            log=(lambda e: emit({"log": e})) if emit else None,
            stop_after=a.get("stop_after"),
            **a.get("kwargs", {}),
        )
        if emit:
            emit({"result": summary})
        ok = True
    finally:
        distributed.teardown(ok)


TRAIN = ("model.train:train", "model.train:TrainConfig")


def _load(ref: str):
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _emitter(path: Optional[str]) -> Callable[[dict], None]:
    def emit(obj: dict) -> None:
        line = json.dumps(obj) + "\n"
        if path is None:
            sys.stdout.write(line)
            sys.stdout.flush()
        else:
            with open(path, "a") as f:
                f.write(line)

    return emit


def torchrun_command(config: TrainConfig, args_json: str, run_id: str = "crawl2llm") -> list[str]:
    """The torchrun command of this machine's share of the run. With nnodes > 1 every machine runs
    the same command (run_id must match); the rendezvous at rdzv_endpoint assigns the ranks."""
    launch = config.launch
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={launch.nproc_per_node}",
        f"--nnodes={launch.nnodes}",
    ]
    if launch.nnodes > 1:
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={launch.rdzv_endpoint}", f"--rdzv-id={run_id}"]
    else:
        cmd += ["--standalone"]  # a rendezvous on a free local port: runs side by side never meet
    return cmd + ["-m", "model.launch", "--args-json", args_json]


def launch(
    train_files: list[str],
    val_files: list[str],
    vocab_size: int,
    config: TrainConfig,
    out_dir: str,
    log: Optional[Callable[[dict], None]] = None,
    stop_after: Optional[int] = None,
    run_id: str = "crawl2llm",
    on_command: Optional[Callable[[list[str]], None]] = None,
) -> dict:
    """train() in config.processes processes under torchrun, started from this process: the same
    arguments, result and log events (rank 0's, as they come). Raises RuntimeError with the end of
    torchrun's output when it fails. on_command sees the command first (to log it for other nodes)."""
    files = [[os.path.abspath(f) for f in train_files], [os.path.abspath(f) for f in val_files], vocab_size]
    return launch_entry(TRAIN, files, config, out_dir, log, stop_after, run_id, on_command)


def launch_entry(
    entry: tuple[str, str],
    args: list,
    config,
    out_dir: str,
    log: Optional[Callable[[dict], None]] = None,
    stop_after: Optional[int] = None,
    run_id: str = "crawl2llm",
    on_command: Optional[Callable[[list[str]], None]] = None,
    kwargs: Optional[dict] = None,
) -> dict:
    """entry = ("module:function", "module:ConfigClass"), a function called as
    function(*args, config, out_dir, log=, stop_after=, **kwargs) (model.train.train, model.sft.sft,
    model.dpo.dpo; JSON-ready arguments), in config.processes processes under torchrun, as launch() says."""
    folder = os.path.join(os.path.abspath(out_dir), LAUNCH_DIR)
    os.makedirs(folder, exist_ok=True)
    events = os.path.join(folder, "events.jsonl")
    args = {
        "entry": entry[0],
        "config_class": entry[1],
        "args": args,
        "kwargs": kwargs or {},
        "config": config.model_dump(),
        "out_dir": os.path.abspath(out_dir),
        "stop_after": stop_after,
        "events": events,
    }
    args_json = os.path.join(folder, "run.json")
    with open(args_json, "w") as f:
        json.dump(args, f, indent=1)
    open(events, "w").close()
    cmd = torchrun_command(config, args_json, run_id)
    if on_command:
        on_command(cmd)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    output = os.path.join(folder, "torchrun.log")
    with open(output, "wb") as out_log, open(events) as follow:
        proc = subprocess.Popen(cmd, stdout=out_log, stderr=subprocess.STDOUT, env=env)
        try:
            result = _follow(proc, follow, log)
        except BaseException:
            _stop(proc)
            raise
    if proc.returncode != 0 or result is None:
        with open(output, errors="replace") as f:
            tail = f.read()[-6000:]
        raise RuntimeError(f"torchrun exited with status {proc.returncode} (full output: {output}):\n{tail}")
    return result


def _follow(proc: subprocess.Popen, events, log: Optional[Callable[[dict], None]]) -> Optional[dict]:
    """Hand each complete events line to log until the process ends; the result event's summary."""
    result, part = None, ""
    while True:
        finished = proc.poll() is not None  # read once more after the end: nothing is left behind
        part += events.read()
        *lines, part = part.split("\n")
        for line in lines:
            event = json.loads(line)
            if "log" in event and log:
                log(event["log"])
            result = event.get("result", result)
        if finished:
            return result
        time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM: torchrun passes it on to the workers and waits for them; SIGKILL if that hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
    # A finished run leaves without interpreter finalization: gloo's threads can still be alive
    # then and abort the process ("terminate called without an active exception") after the
    # run succeeded. Everything is written and the process group is destroyed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
