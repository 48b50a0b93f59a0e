"""The stages of a run, in order: the one table the pipeline flow, the incremental runs, the CLI,
PipelineConfig, the Prefect UI's forms and prefect.yaml's deployments are all derived from.

A stage owns its name, its config model, the code its results depend on and (for a document
filter) the one function it maps over shards. A new filter stage is one declaration in its own
module plus its function: name the module in $CRAWL2LLM_STAGES (comma-separated) and it takes its
place after the stage it names in `after`, in every run, the CLI and the incremental series.

Configs and functions are named as "module:attribute" and loaded when needed, so reading the
table imports neither torch nor presidio.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from functools import cached_property

PLUGINS_ENV = "CRAWL2LLM_STAGES"


class PluginError(ValueError):
    """$CRAWL2LLM_STAGES names a module that cannot be a stage: the message says which and why."""


def load(ref: str):
    """The attribute a "module:attribute" reference names."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Stage:
    """One stage. `code`: the modules whose code decides its outputs (their module-level imports are
    followed, storage.fingerprint.module_closure); `filter`: for a document filter stage, the
    function `(table, config) -> ShardResult` it runs on every shard of its upstream's documents."""

    name: str
    help: str  # one line: the CLI's and the UI's description
    config: str  # "module:Class", a storage.config.StageConfig
    code: tuple[str, ...] = ()
    filter: str | None = None
    after: str | None = None  # a plug-in stage: the stage it follows
    per_increment: bool = True  # runs once per increment of an incremental series (ingest..tokenize)
    optional: bool = False  # PipelineConfig holds None unless given (crawl)
    title: str = ""
    description: str = ""  # the stage flow's longer description (the UI's deployment page)
    # "module:function(config)": the id of a secret the config names (never the secret), part of
    # the fingerprint: another key, another output.
    secret_id: str | None = None
    flow: str = ""  # the module of its Prefect flow (default: flows.stages)
    # a post-training stage: the outputs it may start from, the first one the run made wins
    starts_from: tuple[str, ...] = ("train",)

    @cached_property
    def config_class(self):
        return load(self.config)

    @cached_property
    def filter_function(self):
        return load(self.filter) if self.filter else None

    def code_version(self) -> str:
        from storage.fingerprint import code_version

        return code_version(*self.code)

    @property
    def flow_entrypoint(self) -> str:
        """The Prefect flow that runs this stage on its own (prefect.yaml's entrypoint)."""
        return f"{self.flow or 'flows.stages'}:{self.name}"


BUILT_IN = (
    Stage(
        "crawl",
        "crawl seed URLs into WARC files",
        "pipeline.crawl:CrawlConfig",
        ("pipeline.crawl",),
        per_increment=False,
        optional=True,
        title="Crawl",
    ),
    Stage(
        "ingest",
        "WARC/WET/ARC/JSONL/Parquet files, folders, globs or a Common Crawl listing → document shards",
        "pipeline.ingest:IngestConfig",
        ("pipeline.ingest_steps", "pipeline.ingest_plan"),
        title="Ingest",
    ),
    Stage(
        "dedup",
        "exact + MinHash near-duplicate removal over a stage output",
        "pipeline.dedup:DedupConfig",
        ("pipeline.dedup_run",),
        title="Dedup",
    ),
    Stage(
        "quality",
        "Gopher quality rules over a stage output",
        "pipeline.quality:QualityConfig",
        ("pipeline.filter_step", "pipeline.quality"),
        filter="pipeline.quality:filter_quality",
        title="Quality",
        description="Gopher quality and repetition rules (C4 and FineWeb optional); every removed document keeps "
        "the first rule that removed it, or with `signals` every document is kept with its signals as columns.",
    ),
    Stage(
        "pii",
        "presidio PII scrubbing over a stage output",
        "pipeline.pii:PiiConfig",
        ("pipeline.filter_step", "pipeline.pii"),
        filter="pipeline.pii:scrub",
        title="PII",
        description="presidio scrubbing: emails, phones, IPs, cards, IBANs replaced by typed placeholders or keyed "
        "pseudonyms (the key's id, not the key, is part of the fingerprint).",
        secret_id="pipeline.pii:pseudonym_key_id",
    ),
    Stage(
        "tokenize",
        "train a BPE and write Arrow token shards from a stage output",
        "pipeline.tokenize:TokenizeConfig",
        ("pipeline.tokenize_steps",),
        title="Tokenize",
    ),
    Stage(
        "train",
        "pretrain a GPT on a tokenize output",
        "model.train:TrainConfig",
        ("model.train",),
        per_increment=False,
        title="Train",
        flow="flows.training",
    ),
    Stage(
        "evaluate",
        "held-out loss, benchmarks and samples for a train output or any checkpoint",
        "model.evaluate:EvalConfig",
        ("model.evaluate",),
        per_increment=False,
        title="Evaluate",
        flow="flows.training",
    ),
    Stage(
        "sft",
        "instruction-tune a train output's model on instruction records (Alpaca or chat JSON/JSONL)",
        "model.sft:SFTConfig",
        ("model.sft",),
        per_increment=False,
        optional=True,
        title="SFT",
        description="Supervised instruction tuning of a pretrained GPT: records rendered in the chat format, "
        "loss on the answers only, packed rows; held-out answer loss, perplexity and end-of-turn share "
        "before and after. Resumes from its last checkpoint.",
        flow="flows.sft",
    ),
    Stage(
        "classify",
        "fine-tune a train output's GPT as a text classifier (SMS spam, any labelled .tsv/.csv/JSONL)",
        "model.classify:ClassifyConfig",
        ("model.classify",),
        per_increment=False,
        optional=True,
        title="Classify",
        description="Classification fine-tuning (Raschka ch. 6): a class head on the last token (or the mean), "
        "the head, the last blocks or all weights trained with cross-entropy, validation accuracy during "
        "training, test-split accuracy, per-class precision/recall/F1 and the confusion matrix.",
        flow="flows.classify",
    ),
    Stage(
        "dpo",
        "preference-tune a chat model (an sft output) with DPO or IPO against a frozen reference",
        "model.dpo:DPOConfig",
        ("model.dpo",),
        per_increment=False,
        optional=True,
        title="DPO",
        description="Direct preference optimization (or IPO) on pairs of chosen and rejected answers, the "
        "reference's log-probs computed once and cached as their own output (reused by runs with another "
        "beta); held-out reward accuracy, margins, log-probs and KL to the reference. Resumes from its last "
        "checkpoint.",
        flow="flows.dpo",
        starts_from=("sft", "train"),
    ),
)


def filter_stage(name: str, help: str, config: str, function: str, after: str, title: str = "") -> Stage:
    """A document filter stage: `function(table, config) -> ShardResult` over every shard, placed
    after `after`. Its code is the function's module (and what that imports) and the shard step."""
    module = function.partition(":")[0]
    return Stage(
        name, help, config, ("pipeline.filter_step", module), filter=function, after=after, title=title or name
    )


def build(plugins: list[str] = ()) -> tuple[Stage, ...]:
    """The built-in stages with each plug-in module's STAGE inserted after the stage it names."""
    table = list(BUILT_IN)
    for module in plugins:
        try:
            stage = getattr(importlib.import_module(module), "STAGE", None)
        except ImportError as e:
            raise PluginError(f"{PLUGINS_ENV}: module {module!r} cannot be imported ({e}); is it on PYTHONPATH?") from e
        if not isinstance(stage, Stage):
            raise PluginError(f"{PLUGINS_ENV}: module {module} has no STAGE = pipeline.stage_table.filter_stage(...)")
        names = [s.name for s in table]
        if stage.name in names:
            raise PluginError(f"{PLUGINS_ENV}: stage {stage.name!r} of {module} is already defined")
        if (
            stage.after not in names
            or names.index(stage.after) < names.index("ingest")
            or names.index(stage.after) >= names.index("tokenize")
        ):
            raise PluginError(
                f"{PLUGINS_ENV}: stage {stage.name!r} of {module} must come after one of "
                f"{', '.join(names[names.index('ingest') : names.index('tokenize')])}, not {stage.after!r}"
            )
        table.insert(names.index(stage.after) + 1, stage)
    return tuple(table)


def _plugins() -> list[str]:
    return [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]


TABLE = build(_plugins())
NAMES = tuple(s.name for s in TABLE)
BY_NAME = {s.name: s for s in TABLE}
# The stages each increment runs, ingest first, tokenize last; the document stages between them.
PER_INCREMENT = tuple(s.name for s in TABLE if s.per_increment)
DOC_STAGES = PER_INCREMENT[1:-1]


def previous(name: str) -> str:
    """The stage whose output this per-increment stage reads."""
    return PER_INCREMENT[PER_INCREMENT.index(name) - 1]
