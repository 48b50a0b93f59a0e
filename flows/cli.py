"""The `crawl2llm` command: the demo, a whole pipeline from a YAML config, or one stage at a time.

Flows are imported only after the Prefect environment is set, because Prefect reads its settings
at import time.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from pipeline.inputs import CC_BASE_URL

STAGE_HELP = {
    "crawl": "crawl seed URLs into WARC files",
    "ingest": "WARC/WET/ARC/JSONL/Parquet files, folders, globs or a Common Crawl listing → document shards",
    "dedup": "exact + MinHash near-duplicate removal over a stage output",
    "quality": "Gopher quality rules over a stage output",
    "pii": "presidio PII scrubbing over a stage output",
    "tokenize": "train a BPE and write Arrow token shards from a stage output",
    "train": "pretrain a GPT on a tokenize output",
    "evaluate": "held-out loss, benchmarks and samples for a train output or any checkpoint",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crawl2llm", description="Web crawl archives to a trained, evaluated GPT.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="offline demo: crawl a local site, run every stage, train a tiny GPT")
    d.add_argument("--store", default="store/demo", help="store folder or fsspec URL (default: store/demo)")
    d.add_argument("--pages", type=int, default=None, help="pages to crawl (default: the demo's own)")
    d.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's own)")

    r = sub.add_parser("run", help="the whole pipeline from a YAML config (fields as in the Prefect UI form)")
    r.add_argument("config", help="YAML file with PipelineConfig fields (see `crawl2llm config`)")
    r.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field, e.g. --set quality.min_words=30 (repeatable)")

    c = sub.add_parser("config", help="print a full default pipeline config as YAML")
    c.add_argument("--inputs", nargs="*", default=["path/to/*.warc.gz"])

    for name, text in STAGE_HELP.items():
        s = sub.add_parser(name, help=text, description=text)
        if name == "crawl":
            s.add_argument("seeds", nargs="+", help="seed URLs")
        elif name == "ingest":
            s.add_argument("inputs", nargs="+", help="files, folders, globs, fsspec URLs, a Common Crawl listing "
                                                     "(CC-MAIN-2024-51, CC-MAIN-2024-51/wet, *.paths.gz) or a crawl output")
        else:
            s.add_argument("source", help="the upstream stage output (a folder holding manifest.json)")
        if name in ("crawl", "ingest"):
            s.add_argument("--store", default="store", help="store folder or fsspec URL (default: ./store)")
        if name == "ingest":
            s.add_argument("--limit", type=int, default=None, help="ingest only the first N input files")
            s.add_argument("--cc-base-url", default=CC_BASE_URL,
                           help=f"base URL of a Common Crawl listing's paths (default: {CC_BASE_URL})")
        s.add_argument("--config", help=f"YAML file with the {name} config fields")
        s.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
        if name not in ("crawl", "train", "evaluate"):
            s.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")

    e = sub.add_parser("export", help="a checkpoint as a Hugging Face transformers model folder (lm_eval --model hf)",
                       description="Write config.json, model.safetensors and the tokenizer files of a checkpoint: "
                                   "GPT2LMHeadModel for the GPT-2 architecture, LlamaForCausalLM or "
                                   "Qwen3ForCausalLM for the modern one.")
    e.add_argument("source", help="a train output (store/train/<fp>), its model.pt, a training checkpoint "
                                  "or a folder holding one")
    e.add_argument("out_dir", help="the folder to write")
    e.add_argument("--data", default="", help="the tokenize output whose tokenizer a loose checkpoint file uses")

    srv = sub.add_parser(
        "server", help="Prefect server + deployments + worker in the foreground, so the UI runs flows (Ctrl-C stops)",
        description="Without an action: start the local Prefect server (or use the one that answers), register "
                    "the deployments of prefect.yaml and run a worker on the crawl2llm pool, in the foreground "
                    "until Ctrl-C. `start` / `stop`: only a background server for the other commands.")
    srv.add_argument("action", nargs="?", choices=["start", "stop"],
                     help="start or stop a background server only (no deployments, no worker)")
    srv.add_argument("--port", type=int, default=None, help="server port (default: 4200)")
    srv.add_argument("--no-deploy", action="store_true",
                     help="do not register the deployments again (they are kept in the server's database)")
    return p


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set expects FIELD=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def _stage_config(name: str, args) -> object:
    from flows.config import PipelineConfig

    cls = PipelineConfig.model_fields[name].annotation
    cls = getattr(cls, "__args__", (cls,))[0]  # Optional[CrawlConfig] -> CrawlConfig
    data = {}
    if args.config:
        data = yaml.safe_load(open(args.config)) or {}
    if name == "crawl":
        data["seeds"] = args.seeds
    for k, v in _overrides(args.set).items():
        data[k] = v
    from pydantic import ValidationError

    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise SystemExit(f"invalid {name} config: " + "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from flows import prefect_env

    home = prefect_env.configure()
    if args.command == "server":
        port = args.port or prefect_env.PORT
        if args.action is None:
            from flows.server import run_server

            return run_server(home, port, deploy=not args.no_deploy)
        if args.action == "stop":
            print("stopped" if prefect_env.stop_server(home) else "no server started by crawl2llm is running")
        else:
            print(f"Prefect UI: {prefect_env.ensure_server(home, port).removesuffix('/api')}")
        return 0
    if args.command == "export":
        from model.export import export_checkpoint
        from storage import StoreError

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

    from flows.config import ConfigError, load_config
    from pipeline.inputs import InputError, refuse_credentials, resolve_inputs
    from storage import StoreError

    try:
        if args.command == "run":
            config = load_config(args.config, _overrides(args.set))
            refuse_credentials(config.inputs, config.cc_base_url)  # Prefect would store them with the run
            if config.inputs and not config.incremental:  # an incremental series may find nothing new
                resolve_inputs(config.inputs, config.input_limit, config.cc_base_url)  # before starting anything
        else:
            config = _stage_config(args.command, args)
            if args.command == "ingest":
                if args.limit is not None and args.limit < 1:
                    raise InputError(f"--limit must be at least 1, got {args.limit}")
                _check_ingest_inputs(args.inputs, args.limit, args.cc_base_url)
    except (ConfigError, InputError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    url = prefect_env.ensure_server(home)
    print(f"Prefect UI: {url.removesuffix('/api')}", file=sys.stderr)
    try:
        result = _run(args, config)
    except (InputError, StoreError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0


def _check_ingest_inputs(inputs: list[str], limit: int | None, cc_base_url: str) -> None:
    import fsspec

    from pipeline.inputs import refuse_credentials, resolve_inputs

    refuse_credentials(inputs, cc_base_url)
    if len(inputs) == 1:
        fs, path = fsspec.core.url_to_fs(inputs[0])
        if fs.exists(f"{path.rstrip('/')}/manifest.json"):
            return
    resolve_inputs(inputs, limit, cc_base_url)


def _run(args, config) -> dict:
    from flows import stages, training
    from flows.pipeline import pipeline

    if args.command == "run":
        return pipeline(config)
    if args.command == "crawl":
        return stages.crawl(config, args.store)
    if args.command == "ingest":
        return stages.ingest(args.inputs, config, args.store, args.workers, args.limit, args.cc_base_url)
    if args.command in ("train", "evaluate"):
        return getattr(training, args.command)(args.source, config)
    return getattr(stages, args.command)(args.source, config, args.workers)


if __name__ == "__main__":
    raise SystemExit(main())
