"""The whole pipeline's configuration: the same pydantic models the Prefect UI renders as forms,
loaded from YAML by `crawl2llm run CONFIG.yaml`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from model.evaluate import EvalConfig
from model.train import TrainConfig
from pipeline.crawl import CrawlConfig
from pipeline.dedup import DedupConfig
from pipeline.ingest import IngestConfig
from pipeline.inputs import CC_BASE_URL
from pipeline.pii import PiiConfig
from pipeline.quality import QualityConfig
from pipeline.tokenize import TokenizeConfig

STAGES = ("crawl", "ingest", "dedup", "quality", "pii", "tokenize", "train", "evaluate")
Stage = Literal["ingest", "dedup", "quality", "pii", "tokenize", "train", "evaluate"]


class PipelineConfig(BaseModel):
    """Everything one pipeline run needs. Give `inputs` (crawl files) or `crawl` (seed URLs)."""

    model_config = ConfigDict(extra="forbid")

    store: str = Field("store", description="Where every stage writes: a folder or an fsspec URL (s3://bucket/path).")
    inputs: list[str] = Field(default_factory=list, description="WARC/WET/ARC/JSONL/Parquet files, folders, globs, URLs, "
                              "or "
                              "Common Crawl listings: a crawl name such as CC-MAIN-2024-51 (its WARC files; "
                              "CC-MAIN-2024-51/wet for WET) or a *.paths.gz file. Leave empty when crawling "
                              "seed URLs instead.")
    input_limit: Optional[int] = Field(None, ge=1, description="Ingest only the first this many input files "
                                       "(in listing order): start small on a whole Common Crawl snapshot.")
    cc_base_url: str = Field(CC_BASE_URL, min_length=1, description="Where the relative paths of a Common Crawl "
                             "listing are fetched from (https://data.commoncrawl.org/, s3://commoncrawl/ or a mirror).")
    crawl: Optional[CrawlConfig] = Field(None, description="Crawl these seed URLs into WARC first (instead of inputs).")
    incremental: bool = Field(False, description="Each run takes only the input files that earlier runs of these "
                              "`inputs` did not (a ledger in the store records them): their documents go through "
                              "ingest to tokenize on their own, duplicates of documents earlier runs kept are "
                              "removed, they are encoded with the first run's tokenizer, and training reads every "
                              "run's token shards. Earlier outputs are never changed. For a folder or glob that "
                              "new crawl files land in; keep `inputs` the same from run to run.")
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="Record filtering, HTML to text, language id.")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="Exact and MinHash near-duplicate removal.")
    quality: QualityConfig = Field(default_factory=QualityConfig, description="Gopher quality rules.")
    pii: PiiConfig = Field(default_factory=PiiConfig, description="presidio PII scrubbing.")
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig, description="BPE training and token shards.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="GPT pretraining.")
    evaluate: EvalConfig = Field(default_factory=EvalConfig, description="Held-out loss and samples.")
    stop_after: Stage = Field("evaluate", description="Run the stages up to and including this one.")
    workers: Optional[int] = Field(None, ge=0, description="Worker processes for CPU-bound stages "
                                   "(default: one per core; 0 runs shards inline).")
    dask_address: Optional[str] = Field(None, description="Run the shard tasks of ingest to tokenize on this "
                                        "Dask cluster (tcp://scheduler:8786) instead of local worker processes; "
                                        "the store must be reachable from every worker (s3://... or a shared "
                                        "folder). Default: $CRAWL2LLM_DASK_ADDRESS, or none.")

    @model_validator(mode="after")
    def _one_source(self) -> "PipelineConfig":
        if bool(self.inputs) == bool(self.crawl):
            raise ValueError("give either `inputs` (crawl files) or `crawl` (seed URLs), not both and not neither")
        return self

    @model_validator(mode="after")
    def _incremental_needs_inputs(self) -> "PipelineConfig":
        if self.incremental and self.crawl:
            raise ValueError("`incremental` takes new files of `inputs`; a `crawl` is one output, re-crawled as a whole")
        return self


class ConfigError(ValueError):
    """A config file is missing, is not YAML, or has an invalid value (the message names which)."""


def load_config(path: str | Path, overrides: dict | None = None) -> PipelineConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping of pipeline fields, got {type(data).__name__}")
    for key, value in (overrides or {}).items():
        _set_path(data, key, value)
    return validate_config(data, str(p))


def validate_config(data: dict, where: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or '(top)'}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid {where}: {problems}") from None


def _set_path(data: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        data = data.setdefault(k, {})
    data[keys[-1]] = value
