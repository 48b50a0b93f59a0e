"""The whole pipeline's configuration: the same pydantic models the Prefect UI renders as forms,
loaded from YAML by `crawl2llm run CONFIG.yaml` (and a stage's fields by `crawl2llm STAGE --config`).

Every way a config can be wrong ends here as one ConfigError whose message is one line naming the
file, the field (dotted, as in the YAML) and what is allowed: the CLI prints it before any work.
"""

from __future__ import annotations

import difflib
import re
import sys
import warnings
from pathlib import Path
from typing import Annotated, Literal, Optional
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from pipeline.inputs import CC_BASE_URL
from pipeline.stage_table import TABLE
from storage.config import ConfigError, StageConfig, one_line

STAGES = tuple(s.name for s in TABLE)  # crawl, ingest, dedup, quality, pii, tokenize, train, evaluate (+ plug-ins)
Stage = Literal[STAGES[1:]]
MAX_WORKERS = 1024
# A flow parameter that names something to read: never empty, so the UI's form marks it before a run.
Location = Annotated[str, Field(min_length=1)]
Locations = Annotated[list[Location], Field(min_length=1)]
DASK_SCHEMES = ("tcp", "tls", "ucx", "ws", "wss", "inproc")


def _one_source_schema(schema: dict) -> None:
    """What `_one_source` checks, said in the JSON schema too, so the UI's form marks an empty `inputs`
    before the run is made (Prefect validates a form against the schema, not against pydantic)."""
    schema["if"] = {"properties": {"crawl": {"type": "null"}}}  # no crawl, or crawl: null
    schema["then"] = {"required": ["inputs"], "properties": {"inputs": {"minItems": 1}}}


class _RunFields(StageConfig):
    """What a run needs besides its stages' configs: where it reads and writes, how far it goes."""

    model_config = ConfigDict(json_schema_extra=_one_source_schema)

    store: str = Field(
        "store", min_length=1, description="Where every stage writes: a folder or an fsspec URL (s3://bucket/path)."
    )
    inputs: list[Location] = Field(
        default_factory=list,
        description="WARC/WET/ARC/JSONL/Parquet files, folders, globs, URLs, "
        "or "
        "Common Crawl listings: a crawl name such as CC-MAIN-2024-51 (its WARC files; "
        "CC-MAIN-2024-51/wet for WET) or a *.paths.gz file. Leave empty when crawling "
        "seed URLs instead.",
    )
    input_limit: Optional[int] = Field(
        None,
        ge=1,
        description="Ingest only the first this many input files "
        "(in listing order): start small on a whole Common Crawl snapshot.",
    )
    cc_base_url: str = Field(
        CC_BASE_URL,
        min_length=1,
        title="Common Crawl base URL",
        description="Where the relative paths of a Common Crawl "
        "listing are fetched from (https://data.commoncrawl.org/, s3://commoncrawl/ or a mirror).",
    )
    incremental: bool = Field(
        False,
        description="Each run takes only the input files that earlier runs of these "
        "`inputs` did not (a ledger in the store records them): their documents go through "
        "ingest to tokenize on their own, duplicates of documents earlier runs kept are "
        "removed, they are encoded with the first run's tokenizer, and training reads every "
        "run's token shards. Earlier outputs are never changed. For a folder or glob that "
        "new crawl files land in; keep `inputs` the same from run to run.",
    )
    stop_after: Stage = Field("evaluate", description="Run the stages up to and including this one.")
    workers: Optional[int] = Field(
        None,
        ge=0,
        le=MAX_WORKERS,
        description="Worker processes for CPU-bound stages (default: one per core; 0 runs shards inline).",
    )
    dask_address: Optional[str] = Field(
        None,
        description="Run the shard tasks of ingest to tokenize on this "
        "Dask cluster (tcp://scheduler:8786) instead of local worker processes; "
        "the store must be reachable from every worker (s3://... or a shared "
        "folder). Default: $CRAWL2LLM_DASK_ADDRESS, or none.",
    )

    @field_validator("dask_address", check_fields=False)
    @classmethod
    def _dask_address(cls, address: Optional[str]) -> Optional[str]:
        if address is None:
            return address
        parts = urlsplit(address if "://" in address else f"tcp://{address}")
        try:
            port = parts.port or 0
        except ValueError:  # not a number, or above 65535
            port = 0
        if (
            parts.scheme not in DASK_SCHEMES
            or not parts.hostname
            or parts.path
            or not (port or parts.scheme == "inproc")
        ):
            raise ValueError(
                f"{address!r} is not a Dask scheduler address such as tcp://scheduler:8786 "
                f"(scheme {', '.join(DASK_SCHEMES)}, a host and a port 1-65535)"
            )
        return address

    @model_validator(mode="after")
    def _one_source(self) -> "_RunFields":
        if bool(self.inputs) == bool(self.crawl):
            raise ValueError("give either `inputs` (crawl files) or `crawl` (seed URLs), not both and not neither")
        return self

    @model_validator(mode="after")
    def _incremental_needs_inputs(self) -> "_RunFields":
        if self.incremental and self.crawl:
            raise ValueError(
                "`incremental` takes new files of `inputs`; a `crawl` is one output, re-crawled as a whole"
            )
        return self


def _stage_field(stage) -> tuple:
    """A stage's config as a PipelineConfig field (its form in the UI): the table's title and help."""
    cls = stage.config_class
    if stage.optional:
        return Optional[cls], Field(None, title=stage.title, description=stage.help)
    return cls, Field(default_factory=cls, title=stage.title or stage.name, description=stage.help)


PipelineConfig = create_model(
    "PipelineConfig",
    __base__=_RunFields,
    __doc__="Everything one pipeline run needs. Give `inputs` (crawl files) or `crawl` (seed URLs).",
    __module__=__name__,
    **{stage.name: _stage_field(stage) for stage in TABLE},
)


# -- reading YAML: bounded, strict, one line per problem -----------------------------------------

MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; this bounds what a mistaken or hostile file costs
MAX_VALUES = 100_000  # values after YAML aliases are expanded (a "billion laughs" file has 10**9)
MAX_DEPTH = 50
PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("null", "bool", "int", "float", "str", "seq", "map", "merge")}
FIELD_PART = re.compile(r"[^\s.=]+")
# Errors whose message reads better with the value given: "greater than 0 (got -5)".
SHOW_INPUT = (
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "literal_error",
    "finite_number",
    "string_too_short",
    "int_parsing",
    "float_parsing",
    "int_from_float",
    "bool_parsing",
)


def load_config(path: str | Path, overrides: list[str] = ()) -> PipelineConfig:
    """The PipelineConfig of a YAML file with `--set FIELD=VALUE` overrides."""
    data = read_yaml(path)
    apply_overrides(data, overrides)
    return validate(PipelineConfig, data, str(path))


def validate_config(data: dict, where: str = "config") -> PipelineConfig:
    return validate(PipelineConfig, data, where)


def validate(cls: type[BaseModel], data, where: str):
    """cls validated from data; a ValidationError becomes one ConfigError line naming each field as
    a dotted path, as the YAML or --set wrote it. A deprecated key that still works (quality's flat
    keys) is one `warning: ...` line on stderr: Python hides DeprecationWarnings from a command's user."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DeprecationWarning)
            config = cls.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        problems = [_problem(cls, err) for err in errors[:3]]
        more = f"; and {len(errors) - 3} more" if len(errors) > 3 else ""
        raise ConfigError(one_line(f"{where}: {'; '.join(problems)}{more}")) from None
    for w in caught:
        if issubclass(w.category, DeprecationWarning):
            print(one_line(f"warning: {where}: {w.message}"), file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return config


def _problem(cls: type[BaseModel], err: dict) -> str:
    loc = [str(x) for x in err["loc"]]
    msg = err["msg"].removeprefix("Value error, ")
    if loc[-1:] == ["[key]"]:  # a dict's key, not its value: {field, key, "[key]"}
        loc, msg = loc[:-2], f"key {_short(loc[-2])}: {msg}"
    field = ".".join(_short(x) for x in loc)
    if err["type"] == "extra_forbidden":
        known = _fields_at(cls, loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        msg = (
            f"unknown field (did you mean {close[0]}?)"
            if close
            else f"unknown field (allowed: {', '.join(known)})"
            if known
            else "unknown field"
        )
    elif err["type"] == "list_type" and isinstance(err.get("input"), str):
        msg += f" such as [{_short(err['input'])}]"
    elif err["type"] == "value_error" and msg.split(" ", 1)[0] in _fields_at(cls, loc):
        # a rule across fields of one config, worded "FIELD ...": named as that field
        return ".".join(filter(None, (field, msg)))
    elif err["type"] in SHOW_INPUT and isinstance(err.get("input"), (int, float, str)):
        msg += f" (got {_short(repr(err['input']))})"
    elif err.get("input", ...) is None:
        msg += " (got null: an empty value)"
    return f"{field}: {msg}" if field else msg


def _fields_at(cls: type[BaseModel], loc: list[str]) -> list[str]:
    """The field names of the model at loc (a nested config), to suggest one for a typo."""
    for name in loc:
        field = cls.model_fields.get(name)
        ann = field.annotation if field else None
        ann = next((a for a in getattr(ann, "__args__", ()) if isinstance(a, type)), ann)  # Optional[X] -> X
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        cls = ann
    return list(cls.model_fields)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def read_yaml(path: str | Path) -> dict:
    """The mapping a YAML config file holds; ConfigError for anything else (missing, not a file,
    too big, not UTF-8, not YAML, not a mapping, a duplicate key, a tag, an alias bomb)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    if not p.is_file():
        raise ConfigError(f"config {p} is not a file")
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config {p} is {p.stat().st_size:,} bytes; a config file may hold at most 1 MiB")
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {p} is not UTF-8 text (byte {e.start} is {e.object[e.start]:#04x})") from None
    except OSError as e:
        raise ConfigError(f"config {p} is not readable: {e.strerror or e}") from None
    data = parse_yaml(text, str(p))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping of fields (`field: value` lines), not a {_kind(data)}")
    return data


def parse_yaml(text: str, where: str):
    """One YAML document, as yaml.safe_load reads it, after checking its nodes (_check_nodes)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, where)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        what = f"{e.context} {e.problem}" if (e.problem or "").startswith("but ") else e.problem or e.context
        raise ConfigError(one_line(f"{where} is not valid YAML: {at}{what}")) from None
    except yaml.YAMLError as e:
        raise ConfigError(one_line(f"{where} is not valid YAML: {e}")) from None
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply") from None
    finally:
        loader.dispose()


def _check_nodes(root: yaml.Node, where: str) -> None:
    """Refuse what yaml.safe_load would take silently or at great cost: a key given twice (it keeps
    the last), a tag (!!python/..., !include), a value holding itself, and aliases that expand to
    more than MAX_VALUES values."""
    sizes: dict[int, int] = {}

    def fail(node: yaml.Node, field: str, problem: str):
        field = f"{field}: " if field else ""
        raise ConfigError(one_line(f"{where} line {node.start_mark.line + 1}: {field}{problem}"))

    def size(node: yaml.Node, field: str, open_: set[int], depth: int) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_:
            fail(node, field, "a recursive alias (a value that holds itself)")
        if depth > MAX_DEPTH:
            fail(node, field, f"nested more than {MAX_DEPTH} levels deep")
        if node.tag not in PLAIN_TAGS:
            fail(
                node,
                field,
                f"the YAML tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not allowed "
                "(plain values, lists and mappings only)",
            )
        open_.add(id(node))
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(item, f"{field}.{i}".lstrip("."), open_, depth + 1) for i, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            seen = set()
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else "?"
                path = f"{field}.{name}".lstrip(".")
                if key.tag != "tag:yaml.org,2002:merge":
                    if name in seen:
                        fail(key, path, "duplicate key (YAML would silently keep the last one)")
                    seen.add(name)
                total += size(key, path, open_, depth + 1) + size(value, path, open_, depth + 1)
        open_.discard(id(node))
        if total > MAX_VALUES:
            fail(node, field, f"expands to more than {MAX_VALUES:,} values (YAML aliases); a config is far smaller")
        sizes[id(node)] = total
        return total

    size(root, "", set(), 0)


def _kind(value) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "yes/no value"}.get(
        type(value), type(value).__name__
    )


# -- --set FIELD=VALUE ---------------------------------------------------------------------------


def apply_overrides(data: dict, pairs: list[str]) -> dict:
    """Each `--set a.b.c=VALUE` (VALUE read as YAML) into data, in order."""
    for pair in pairs:
        key, eq, text = pair.partition("=")
        if not eq:
            raise ConfigError(one_line(f"--set {pair}: expected FIELD=VALUE, e.g. --set quality.gopher.min_words=30"))
        keys = key.split(".")
        if not all(FIELD_PART.fullmatch(k) for k in keys):
            raise ConfigError(
                one_line(
                    f"--set {key or '(empty)'}={_short(text)}: a field is a dotted path of "
                    "names such as quality.gopher.min_words"
                )
            )
        value = parse_yaml(text, f"--set {key}")
        target = data
        for i, k in enumerate(keys[:-1]):
            if target.get(k) is None:
                target[k] = {}
            target = target[k]
            if not isinstance(target, dict):
                raise ConfigError(
                    one_line(
                        f"--set {key}: {'.'.join(keys[: i + 1])} is {_short(repr(target))}, "
                        f"not a mapping of fields, so it has no field {keys[i + 1]}"
                    )
                )
        target[keys[-1]] = value
    return data


# -- what a config asks of this machine ----------------------------------------------------------


def check_machine(configs: dict[str, BaseModel]) -> None:
    """Stage configs (by stage name) checked against this machine before any work: a pseudonym
    key in the environment, a CUDA GPU when a device says cuda. The stages check again when they run."""
    from model.gpt import resolve_device
    from pipeline.pii import pseudonym_key_id

    if "pii" in configs:
        pseudonym_key_id(configs["pii"])
    for name, where in (("train", "launch."), ("evaluate", "")):  # training's device is in its launch group
        config = configs.get(name)
        if config is not None and (config.launch if where else config).device == "cuda":
            try:
                resolve_device("cuda")
            except ConfigError as e:
                raise ConfigError(f"{name}.{where}{e}") from None


def stage_configs(config: PipelineConfig) -> dict[str, BaseModel]:
    """The configs of the stages a pipeline run goes through (up to stop_after)."""
    last = STAGES.index(config.stop_after)
    return {name: getattr(config, name) for name in STAGES[: last + 1] if getattr(config, name) is not None}
