"""The `crawl2llm` command: the demo, a whole pipeline from a YAML config, or one stage at a time.

Flows are imported only after the Prefect environment is set, because Prefect reads its settings
at import time.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import yaml

from pipeline.inputs import CC_BASE_URL, InputError

try:
    from pipeline.stage_table import BY_NAME, TABLE, load
except ValueError as e:  # a plug-in stage of $CRAWL2LLM_STAGES that cannot be one (PluginError)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
from storage import StoreError
from storage.config import ConfigError, one_line

# A bad config, input or store: one line for the user, never a traceback.
USER_ERRORS = (ConfigError, InputError, StoreError, FileNotFoundError)

STAGE_HELP = {stage.name: stage.help for stage in TABLE}  # one subcommand per stage, plug-ins too


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one `error:` line like every other error of the command."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _count(low: int):
    """An argparse type: a whole number of at least `low` (at most MAX_WORKERS for --workers)."""
    from flows.config import MAX_WORKERS

    def count(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = None
        if n is None or n < low or (low == 0 and n > MAX_WORKERS):
            allowed = f"0 to {MAX_WORKERS}" if low == 0 else f"at least {low}"
            raise argparse.ArgumentTypeError(f"expected a whole number {allowed}, got {text!r}")
        return n

    return count


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="crawl2llm", description="Web crawl archives to a trained, evaluated GPT.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="offline demo: crawl a local site, run every stage, train a tiny GPT")
    d.add_argument("--store", default="store/demo", help="store folder or fsspec URL (default: store/demo)")
    d.add_argument("--pages", type=_count(1), default=None, help="pages to crawl (default: the demo's own)")
    d.add_argument("--steps", type=_count(1), default=None, help="training steps (default: the demo's own)")

    r = sub.add_parser("run", help="the whole pipeline from a YAML config (fields as in the Prefect UI form)")
    r.add_argument("config", help="YAML file with PipelineConfig fields (see `crawl2llm config`)")
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a field, e.g. --set quality.gopher.min_words=30 (repeatable)",
    )

    c = sub.add_parser("config", help="print a full default pipeline config as YAML")
    c.add_argument("--inputs", nargs="*", default=["path/to/*.warc.gz"])

    for name, text in STAGE_HELP.items():
        s = sub.add_parser(name, help=text, description=text)
        if name == "crawl":
            s.add_argument("seeds", nargs="+", help="seed URLs")
        elif name == "ingest":
            s.add_argument(
                "inputs",
                nargs="+",
                help="files, folders, globs, fsspec URLs, a Common Crawl listing "
                "(CC-MAIN-2024-51, CC-MAIN-2024-51/wet, *.paths.gz) or a crawl output",
            )
        else:
            s.add_argument("source", help="the upstream stage output (a folder holding manifest.json)")
        if name in ("crawl", "ingest"):
            s.add_argument("--store", default="store", help="store folder or fsspec URL (default: ./store)")
        if name == "ingest":
            s.add_argument("--limit", type=_count(1), default=None, help="ingest only the first N input files")
            s.add_argument(
                "--cc-base-url",
                default=CC_BASE_URL,
                help=f"base URL of a Common Crawl listing's paths (default: {CC_BASE_URL})",
            )
        s.add_argument("--config", help=f"YAML file with the {name} config fields")
        s.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
        if BY_NAME[name].per_increment:  # the sharded data stages
            s.add_argument(
                "--workers", type=_count(0), default=None, help="worker processes (default: one per core; 0: inline)"
            )

    e = sub.add_parser(
        "export",
        help="a checkpoint as a Hugging Face transformers model folder (lm_eval --model hf)",
        description="Write config.json, model.safetensors and the tokenizer files of a checkpoint: "
        "GPT2LMHeadModel for the GPT-2 architecture, LlamaForCausalLM or "
        "Qwen3ForCausalLM for the modern one; an sft output with its chat template "
        "(apply_chat_template), a classify output as *ForSequenceClassification with its labels.",
    )
    e.add_argument(
        "source",
        help="a train, sft or classify output (store/train/<fp>, ...), a model.pt, a training checkpoint "
        "or a folder holding one",
    )
    e.add_argument("out_dir", help="the folder to write")
    e.add_argument("--data", default="", help="the tokenize output whose tokenizer a loose checkpoint file uses")

    pr = sub.add_parser(
        "predict",
        help="classify texts with a classify output (labels and probabilities, one JSON line each)",
        description="Each TEXT's label and the probability of every label, by the classifier a "
        "`crawl2llm classify` run wrote (its output folder, store/classify/<fp>).",
    )
    pr.add_argument("output", metavar="CLASSIFY_OUTPUT", help="a classify output folder (store/classify/<fp>)")
    pr.add_argument("texts", metavar="TEXT", nargs="+", help="texts to classify")
    pr.add_argument("--device", default="cpu", choices=["cpu", "cuda"])

    j = sub.add_parser(
        "judge",
        help="score an sft (or dpo) output's answers to its held-out prompts 0-100 with an LLM judge",
        description="Greedy answers of the tuned model to its test split's prompts, each scored 0-100 "
        "against the reference answer by the model behind an OpenAI-compatible endpoint (the book's "
        "rubric, model/judge.py). Prints the mean and the counts; --out writes every item.",
    )
    j.add_argument("output", metavar="TUNED_OUTPUT", help="an sft or dpo output (store/sft/<fp>)")
    j.add_argument("--url", required=True, help="the judge's base URL, up to /v1 (e.g. http://127.0.0.1:8000/v1)")
    j.add_argument("--model", required=True, help="the model name the judge endpoint serves")
    j.add_argument("--api-key-env", default="", help="the environment variable holding its API key")
    j.add_argument("--prompts", type=_count(0), default=0, help="held-out prompts to answer (0: all)")
    j.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    j.add_argument("--out", help="write the whole result, every item's reply and score, as JSON here")

    for name, text in (
        ("chat", "talk to a model in the terminal (streamed answers, multi-turn history)"),
        ("serve", "an OpenAI-compatible HTTP API for a model (/v1/chat/completions, /v1/completions) and a chat page"),
    ):
        t = sub.add_parser(name, help=text, description=text)
        t.add_argument("model", help="a train output (store/train/<fp>), its model.pt or a training checkpoint")
        t.add_argument("--tokenizer", help="its tokenizer.json (default: the one it was trained with)")
        t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        t.add_argument(
            "--max-tokens",
            type=_count(1),
            default=None,
            help="longest answer in tokens (default: 256; serve: the most a request may ask for, 2048)",
        )
        if name == "chat":
            t.add_argument("--temperature", type=float, default=0.7, help="0: greedy")
            t.add_argument("--top-k", type=_count(1), default=None)
            t.add_argument("--top-p", type=float, default=None)
            t.add_argument("--seed", type=int, default=None, help="repeatable samples")
            t.add_argument("--system", default=None, help="a system message that starts the conversation")
        else:
            t.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
            t.add_argument("--port", type=int, default=8000)
            t.add_argument("--name", default=None, help="the model name clients send (default: the file's name)")
            t.add_argument("--max-body-bytes", type=_count(1), default=1 << 20)
            t.add_argument(
                "--max-queue", type=_count(1), default=64, help="requests waiting at most, besides the one running"
            )

    v = sub.add_parser(
        "verify",
        help="check every committed shard's files against the sizes and CRC-32s its "
        "stats record (exit 1 naming the damaged ones)",
        description="Read every committed shard's stats in a store (or in one stage output, "
        "{store}/{stage}/{fingerprint}) and check each file it records: there, its size, "
        "its CRC-32. A run that reuses shards checks sizes (and CRC-32s on a local disk) "
        "itself and redoes a damaged shard; this reads everything, on any store.",
    )
    v.add_argument("store", metavar="STORE_OR_OUTPUT", help="a store folder or URL, or one stage output in it")

    srv = sub.add_parser(
        "server",
        help="Prefect server + deployments + worker in the foreground, so the UI runs flows (Ctrl-C stops)",
        description="Without an action: start the local Prefect server (or use the one that answers), register "
        "the deployments of prefect.yaml and run a worker on the crawl2llm pool, in the foreground "
        "until Ctrl-C. `start` / `stop`: only a background server for the other commands.",
    )
    srv.add_argument(
        "action",
        nargs="?",
        choices=["start", "stop"],
        help="start or stop a background server only (no deployments, no worker)",
    )
    srv.add_argument("--port", type=int, default=None, help="server port (default: 4200)")
    srv.add_argument(
        "--no-deploy",
        action="store_true",
        help="do not register the deployments again (they are kept in the server's database)",
    )
    srv.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="PATH_OR_URL_PREFIX",
        help="a folder or URL prefix flow runs started from the UI/API may read and write, besides "
        "the project folder and Common Crawl (repeatable; docs/OPERATIONS.md, Security)",
    )
    srv.add_argument(
        "--public-url",
        default="",
        metavar="URL",
        help="where a reverse proxy (TLS) serves this server to other machines, e.g. "
        "https://prefect.example:8443: its host is accepted and the UI calls the API there",
    )
    return p


def _stage_config(name: str, args) -> object:
    """A stage's config from --config, the seed URLs (crawl) and --set (fields named as they wrote them)."""
    from flows.config import PipelineConfig, apply_overrides, read_yaml, validate

    cls = PipelineConfig.model_fields[name].annotation
    cls = getattr(cls, "__args__", (cls,))[0]  # Optional[CrawlConfig] -> CrawlConfig
    data = read_yaml(args.config) if args.config else {}
    if name == "crawl":
        data["seeds"] = args.seeds
    apply_overrides(data, args.set)
    return validate(cls, data, f"{name} config" + (f" {args.config}" if args.config else ""))


def _checked(args) -> object:
    """The config of `run` or a stage command, and its inputs, source and machine, checked before
    the Prefect server or any work starts."""
    from flows.config import check_machine, load_config, stage_configs

    if args.command == "run":
        config = load_config(args.config, args.set)
        _check_run_inputs(config)
        check_machine(stage_configs(config))
        return config
    config = _stage_config(args.command, args)
    if args.command == "ingest":
        _check_ingest_inputs(args.inputs, args.limit, args.cc_base_url)
    elif args.command != "crawl":
        _check_source(args.command, args.source)
    check_machine({args.command: config})
    return config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = None
    if args.command == "run" or args.command in STAGE_HELP:
        try:
            config = _checked(args)
        except USER_ERRORS as e:
            print(f"error: {one_line(str(e))}", file=sys.stderr)
            return 2
    if args.command in ("chat", "serve"):
        return _talk(args)
    if args.command == "verify":  # the store only: no Prefect
        return _verify(args.store)
    if args.command == "predict":  # the model only: no Prefect
        return _predict(args)
    if args.command == "judge":
        return _judge(args)
    from flows import prefect_env

    home = prefect_env.configure()
    if args.command == "server":
        port = args.port or prefect_env.PORT
        if args.action is None:
            from flows.server import run_server

            return run_server(home, port, deploy=not args.no_deploy, allow=args.allow, public_url=args.public_url)
        if args.action == "stop":
            print("stopped" if prefect_env.stop_server(home) else "no server started by crawl2llm is running")
        else:
            try:
                ui = prefect_env.ensure_server(home, port).removesuffix("/api")
            except prefect_env.ServerUnreachable as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            print(f"Prefect UI: {ui} (sign in: {prefect_env.login_url(ui, prefect_env.auth_string(home))})")
        return 0
    if args.command == "export":
        from model.export import export_checkpoint

        try:
            config = export_checkpoint(args.source, args.out_dir, data=args.data)
        except (StoreError, FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{args.out_dir}: {config['architectures'][0]} ({config['model_type']})")
        return 0
    if args.command == "config":
        from flows.config import PipelineConfig

        print(yaml.safe_dump(PipelineConfig(inputs=args.inputs).model_dump(mode="json"), sort_keys=False))
        return 0
    if args.command == "demo":
        from flows.demo import run_demo

        return run_demo(args.store, home, pages=args.pages, steps=args.steps)

    try:
        url = prefect_env.ensure_server(home)
    except prefect_env.ServerUnreachable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Prefect UI: {url.removesuffix('/api')}", file=sys.stderr)
    try:
        result = _run(args, config)
    except USER_ERRORS as e:  # what only a run can find
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0


def _talk(args) -> int:
    """`chat` and `serve`: no Prefect, only the model."""
    from model.serving import Limits, RequestError, Sampling, open_engine

    if args.command == "serve":
        limits = Limits(
            max_tokens=args.max_tokens or Limits.max_tokens,
            max_body_bytes=args.max_body_bytes,
            max_queue=args.max_queue,
        )
    else:
        limits = Limits()
    try:
        engine = open_engine(args.model, args.tokenizer, args.device, getattr(args, "name", None), limits)
    except (StoreError, FileNotFoundError, ValueError, RequestError) as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    if args.command == "chat":
        from model.terminal_chat import run_chat

        sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
        return run_chat(engine, sampling, args.max_tokens, args.system)
    import uvicorn

    from model.openai_api import create_app

    print(f"serving {engine.name} on http://{args.host}:{args.port} (chat page: /, API: /v1)", file=sys.stderr)
    uvicorn.run(create_app(engine), host=args.host, port=args.port, log_level="warning")
    return 0


def _predict(args) -> int:
    """`predict`: one JSON line per text, its label and every label's probability."""
    from model.classify import predict

    try:
        results = predict(args.output, args.texts, args.device)
    except (StoreError, FileNotFoundError, ValueError) as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    for text, result in zip(args.texts, results):
        print(json.dumps({"text": text, **result}))
    return 0


def _judge(args) -> int:
    """`judge`: the mean 0-100 score and the counts; every item in --out."""
    from model.judge import Judge, JudgeError
    from model.sft import held_out_answers, judged

    try:
        said = held_out_answers(args.output, args.prompts, device=args.device)
        result = judged(said, Judge(args.url, args.model, args.api_key_env))
    except (StoreError, FileNotFoundError, ValueError, JudgeError) as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "per_item"}))
    return 0


def _verify(url: str) -> int:
    """`crawl2llm verify`: a table of every stage output's committed shards, then each damaged file."""
    from tqdm import tqdm

    from storage.verify import recorded_bytes, stage_outputs, verify_outputs

    try:
        outputs = stage_outputs(url)
    except (StoreError, FileNotFoundError, ValueError) as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    with tqdm(total=recorded_bytes(outputs), desc="verify", unit="B", unit_scale=True, leave=False) as bar:
        rows = list(verify_outputs(outputs, bar.update))
    width = max([len("output"), *(len(r["output"]) for r in rows)])
    print(f"{'output':<{width}} {'shards':>7} {'files':>7} {'bytes':>14} {'damaged':>8}")
    for r in rows:
        print(
            f"{r['output']:<{width}} {r['shards']:>7} {r['files']:>7} {r['bytes']:>14} {len(r['problems']):>8}"
            + (
                f"  ({r['unrecorded']} shard(s) from before sizes were recorded: not checked)"
                if r["unrecorded"]
                else ""
            )
        )
    problems = [p for r in rows for p in r["problems"]]
    total = sum(r["shards"] for r in rows)
    if not problems:
        print(f"{len(rows)} stage output(s), {total} committed shard(s): every recorded file is intact")
        return 0
    print(f"\n{len(problems)} damaged (the next run that reuses these shards does them again):")
    for p in problems:
        print(f"  {p}")
    return 1


def _check_run_inputs(config) -> None:
    """The inputs of a run resolve, unless an incremental series already recorded increments (their
    files may have moved away; a run with nothing new is fine) or its glob or folder holds no file yet
    (the first night of a nightly series: the run says there is nothing to do)."""
    import fsspec

    from pipeline.inputs import NoInputFiles, refuse_credentials, resolve_inputs

    refuse_credentials(config.inputs, config.cc_base_url)  # Prefect would store them with the run
    if not config.inputs:
        return
    try:
        resolve_inputs(config.inputs, config.input_limit, config.cc_base_url)
    except InputError as e:
        if not config.incremental:
            raise
        if isinstance(e, NoInputFiles):
            print(f"warning: {e}: nothing to do yet", file=sys.stderr)
            return
        fs, root = fsspec.core.url_to_fs(config.store)
        if not fs.exists(root):
            raise
        from storage import Store
        from storage.ledger import Ledger, series_key

        if not Ledger(Store(config.store), series_key(config.inputs, config.cc_base_url)).records():
            raise


def _check_source(command: str, source: str) -> None:
    """The upstream output a stage reads is there (evaluate: a model file or a folder holding one)."""
    import fsspec

    from storage import open_stage

    if command != "evaluate":
        open_stage(source)
        return
    fs, path = fsspec.core.url_to_fs(source)
    if not fs.exists(path):
        raise StoreError(f"model not found: {source} (give a train output, a model file or a checkpoint)")


def _check_ingest_inputs(inputs: list[str], limit: int | None, cc_base_url: str) -> None:
    """The inputs resolve, or name one crawl output."""
    import fsspec

    from pipeline.inputs import refuse_credentials, resolve_inputs

    refuse_credentials(inputs, cc_base_url)
    if len(inputs) == 1:
        fs, path = fsspec.core.url_to_fs(inputs[0])
        if fs.exists(f"{path.rstrip('/')}/manifest.json"):
            return
    resolve_inputs(inputs, limit, cc_base_url)


def _run(args, config) -> dict:
    from flows import stages
    from flows.pipeline import pipeline

    _no_console_traceback()
    if args.command == "run":
        return pipeline(config)
    if args.command == "crawl":
        return stages.crawl(config, args.store)
    if args.command == "ingest":
        return stages.ingest(args.inputs, config, args.store, args.workers, args.limit, args.cc_base_url)
    stage = BY_NAME[args.command]
    stage_flow = load(stage.flow_entrypoint)  # a plug-in's too
    if stage.per_increment:
        return stage_flow(args.source, config, args.workers)
    return stage_flow(args.source, config)


class _NoTraceback(logging.Filter):
    """Prefect logs every exception a task or flow raises with its traceback. The errors the CLI
    prints as one `error:` line (USER_ERRORS) leave the terminal alone; any other exception (a bug)
    keeps its traceback there, and the Prefect UI's log keeps everything."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], USER_ERRORS))


def _no_console_traceback() -> None:
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):  # its console handler is the root's
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not any(
                isinstance(f, _NoTraceback) for f in handler.filters
            ):
                handler.addFilter(_NoTraceback())


if __name__ == "__main__":
    raise SystemExit(main())
