"""The stage table is the one place a stage is declared, and cache keys change only when results can.

Fingerprints are checked through the planner a run uses (flows/increments.py `plan`, which names
every output of every per-increment stage), not through the hash function alone.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import yaml

from pipeline.stage_table import BUILT_IN, BY_NAME, PER_INCREMENT, TABLE, build, filter_stage
from storage.fingerprint import module_closure

fingerprint_module = importlib.import_module("storage.fingerprint")  # storage.fingerprint is also a function
ROOT = Path(__file__).resolve().parents[1]
FILES = [{"url": "crawl/a.warc.gz", "size": 123, "sample_sha256": "0" * 64}]

# Each stage's dependency closure: the modules whose code is in its cache key. A new module-level
# import that widens one is a visible change here (and a deliberate one).
CLOSURES = {
    "crawl": [
        "pipeline",
        "pipeline.charset",
        "pipeline.crawl",
        "pipeline.crawl_fetch",
        "pipeline.crawl_robots",
        "pipeline.crawl_urls",
        "pipeline.deadline",
        "pipeline.http_message",
        "pipeline.schema",
        "pipeline.stage",
        "pipeline.warc",
    ],
    "ingest": [
        "pipeline.charset",
        "pipeline.damage",
        "pipeline.digests",
        "pipeline.extract",
        "pipeline.failpoints",
        "pipeline.http_message",
        "pipeline.ingest",
        "pipeline.ingest_docs",
        "pipeline.ingest_plan",
        "pipeline.ingest_readers",
        "pipeline.ingest_steps",
        "pipeline.langid",
        "pipeline.remote",
        "pipeline.schema",
        "pipeline.shard_steps",
        "pipeline.stage",
        "pipeline.url_filter",
        "pipeline.warc_records",
        "pipeline.zstd_frames",
    ],
    "dedup": [
        "pipeline",
        "pipeline.dedup",
        "pipeline.dedup_clusters",
        "pipeline.dedup_pairs",
        "pipeline.dedup_run",
        "pipeline.dedup_signatures",
        "pipeline.dedup_steps",
        "pipeline.failpoints",
        "pipeline.minhash",
        "pipeline.schema",
        "pipeline.shard_steps",
        "pipeline.stage",
        "pipeline.text",
        "pipeline.union_find",
    ],
    "quality": [
        "pipeline.failpoints",
        "pipeline.filter_step",
        "pipeline.quality",
        "pipeline.quality.c4",
        "pipeline.quality.checks",
        "pipeline.quality.doc",
        "pipeline.quality.fineweb",
        "pipeline.quality.gopher",
        "pipeline.schema",
        "pipeline.shard_steps",
        "pipeline.stage",
        "pipeline.text",
    ],
    "pii": [
        "pipeline.failpoints",
        "pipeline.filter_step",
        "pipeline.pii",
        "pipeline.pii.recognizers",
        "pipeline.schema",
        "pipeline.shard_steps",
        "pipeline.stage",
    ],
    "tokenize": [
        "pipeline.failpoints",
        "pipeline.schema",
        "pipeline.shard_steps",
        "pipeline.stage",
        "pipeline.tokenize",
        "pipeline.tokenize_steps",
        "storage.tokens",
    ],
    "train": [
        "model",
        "model.checkpoints",
        "model.data",
        "model.distributed",
        "model.gpt",
        "model.guard",
        "model.mfu",
        "model.sharded_checkpoint",
        "model.train",
    ],
    "evaluate": ["model.data", "model.evaluate", "model.generate", "model.gpt", "model.tasks", "storage.tokens"],
    "sft": [
        "model",
        "model.batches",
        "model.chat",
        "model.checkpoints",
        "model.data",
        "model.distributed",
        "model.evaluate",
        "model.generate",
        "model.gpt",
        "model.guard",
        "model.judge",
        "model.mfu",
        "model.sft",
        "model.sft_data",
        "model.sharded_checkpoint",
        "model.tasks",
        "model.train",
        "model.tuning",
        "storage.tokens",
    ],
    "classify": [
        "model",
        "model.chat",
        "model.checkpoints",
        "model.classifier",
        "model.classify",
        "model.classify_data",
        "model.classify_metrics",
        "model.data",
        "model.distributed",
        "model.gpt",
        "model.guard",
        "model.mfu",
        "model.sft_data",
        "model.sharded_checkpoint",
        "model.train",
        "storage.tokens",
    ],
    "dpo": [
        "model",
        "model.batches",
        "model.chat",
        "model.checkpoints",
        "model.data",
        "model.distributed",
        "model.dpo",
        "model.evaluate",
        "model.generate",
        "model.gpt",
        "model.guard",
        "model.judge",
        "model.mfu",
        "model.preference_data",
        "model.sft",
        "model.sft_data",
        "model.sharded_checkpoint",
        "model.tasks",
        "model.train",
        "model.tuning",
        "storage.tokens",
    ],
}


def plan_of(config_data: dict) -> dict[str, str]:
    """The fingerprint of every output a run of this config plans (one increment)."""
    from flows.config import validate_config
    from pipeline.dedup_run import outputs
    from pipeline.plan import plan

    config = validate_config({"store": "memory://plan", "inputs": ["x"], **config_data})
    p = plan(config, [{"files": FILES}])[0]
    o = outputs(p["ingest"], config.dedup, None, BY_NAME["dedup"].code_version())
    names = {k: v.fingerprint for k, v in p.items()}
    names.update(
        {
            "dedup-signatures": o.signatures.fingerprint,
            "dedup-pairs": o.pairs.fingerprint,
            "dedup-clusters": o.clusters.fingerprint,
        }
    )
    assert names["dedup"] == o.out.fingerprint
    return names


@pytest.fixture
def edited(monkeypatch):
    """edit(module, change): code_version sees module's source changed by change(text)."""
    real = fingerprint_module.module_source
    changes = {}

    def source(name: str) -> str:
        text = real(name)
        return changes[name](text) if name in changes else text

    monkeypatch.setattr(fingerprint_module, "module_source", source)
    fingerprint_module.code_version.cache_clear()

    def edit(module: str, change) -> None:
        changes[module] = change
        fingerprint_module.code_version.cache_clear()

    yield edit
    fingerprint_module.code_version.cache_clear()


def docstring_edit(text: str) -> str:
    """A comment added and the module docstring reworded: nothing that runs."""
    assert text.lstrip().startswith('"""')
    return "# a comment a reviewer asked for\n" + text.replace('"""', '"""Reworded. ', 1) + "\n# and one more\n"


def code_edit(text: str) -> str:
    return text + "\n\nNEW_CONSTANT = 1\n"


def test_a_docstring_or_comment_edit_of_any_stage_module_keeps_every_fingerprint(edited):
    before = plan_of({})
    modules = sorted({m for s in TABLE if s.per_increment for m in module_closure(s.code)})
    assert {"pipeline.quality.gopher", "pipeline.dedup_pairs", "pipeline.ingest_readers"} <= set(modules)
    for module in modules:
        edited(module, docstring_edit)
    assert plan_of({}) == before


def test_editing_tokenize_code_leaves_ingest_dedup_quality_pii_cached(edited):
    before = plan_of({})
    edited("pipeline.tokenize", code_edit)
    after = plan_of({})
    changed = sorted(k for k in before if before[k] != after[k])
    assert changed == ["tokenize", "tokenizer"]


def test_editing_the_token_contract_retrains_the_tokenizer_only():
    assert "storage.tokens" in module_closure(BY_NAME["tokenize"].code)
    assert "storage.tokens" not in module_closure(BY_NAME["ingest"].code)


def test_memory_mb_and_partitions_leave_every_dedup_output_cached():
    before = plan_of({})
    for dedup in ({"memory_mb": 64}, {"memory_mb": 65536}, {"partitions": 7}):
        assert plan_of({"dedup": dedup}) == before, dedup


def test_a_quality_threshold_reruns_quality_and_later_stages_only():
    before = plan_of({})
    after = plan_of({"quality": {"gopher": {"min_words": 80}}})
    changed = sorted(k for k in before if before[k] != after[k])
    assert changed == ["pii", "quality", "tokenize", "tokenizer"]
    # a dedup threshold keeps the signatures, recomputes pairs and everything after
    after = plan_of({"dedup": {"threshold": 0.9}})
    changed = sorted(k for k in before if before[k] != after[k])
    assert changed == ["dedup", "dedup-clusters", "dedup-pairs", "pii", "quality", "tokenize", "tokenizer"]


def test_each_stage_dependency_closure_is_pinned():
    """A module-level import that widens a stage's cache key shows here: update CLOSURES on purpose."""
    assert {s.name: sorted(module_closure(s.code)) for s in BUILT_IN} == CLOSURES


def test_prefect_yaml_has_one_deployment_per_stage_of_the_table():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    entry = {d["name"]: d["entrypoint"] for d in spec["deployments"]}
    stages = {s.name: s.flow_entrypoint for s in BUILT_IN}
    assert {k: v for k, v in entry.items() if k in stages} == stages
    assert set(entry) - set(stages) == {"pipeline", "pipeline-nightly"}


def test_the_table_drives_config_cli_and_increments():
    from flows.cli import STAGE_HELP
    from flows.config import STAGES, PipelineConfig

    names = [s.name for s in TABLE]
    assert list(STAGES) == names == list(STAGE_HELP)
    assert [f for f in PipelineConfig.model_fields if f in names] == names
    assert PER_INCREMENT[0] == "ingest" and PER_INCREMENT[-1] == "tokenize"


def test_a_plug_in_must_follow_a_document_stage(tmp_path, monkeypatch):
    (tmp_path / "late_stage.py").write_text(
        "from pipeline.stage_table import filter_stage\n"
        "STAGE = filter_stage('late', 'x', 'pipeline.quality:QualityConfig', 'pipeline.quality:filter_quality',"
        " after='train')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="must come after one of ingest, dedup, quality, pii"):
        build(["late_stage"])
    with pytest.raises(ValueError, match="no STAGE"):
        build(["json"])
    assert filter_stage("x", "x", "a:B", "m:f", "quality").code == ("pipeline.filter_step", "m")


# -- structure ----------------------------------------------------------------------------------


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_model_imports_nothing_from_pipeline_and_neither_imports_prefect():
    for package in ("model", "pipeline"):
        for path in sorted((ROOT / package).rglob("*.py")):
            mods = imports(path)
            assert not {m for m in mods if m.split(".")[0] == "prefect"}, path
            if package == "model":
                assert not {m for m in mods if m.split(".")[0] == "pipeline"}, path


def test_no_pipeline_module_over_500_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "pipeline").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert not long


def test_the_shard_step_skeleton_exists_once():
    """Reading an upstream shard, skipping a committed one and writing the stats last live in
    pipeline/shard_steps.py; every stage's steps use them."""
    skeleton = ROOT / "pipeline" / "shard_steps.py"
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        text = path.read_text()
        if path == skeleton:
            continue
        assert not re.search(r"\.commit_shard\(|def run_if_needed|\.shard_done\(", text), path
    for name in ("ingest_steps", "filter_step", "dedup_steps", "tokenize_steps"):
        assert "run_if_needed(" in (ROOT / "pipeline" / f"{name}.py").read_text(), name


def test_no_test_module_imports_another_test_module():
    for path in sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py")):
        assert not {m for m in imports(path) if re.match(r"tests\.test_", m)}, path


def test_another_pseudonym_key_is_another_pii_output(monkeypatch):
    """The stage's secret_id: the key's id, never the key, names the output."""
    monkeypatch.setenv("CRAWL2LLM_PII_SECRET", "key-one")
    one = plan_of({"pii": {"replacement": "pseudonym"}})
    monkeypatch.setenv("CRAWL2LLM_PII_SECRET", "key-two")
    two = plan_of({"pii": {"replacement": "pseudonym"}})
    assert sorted(k for k in one if one[k] != two[k]) == ["pii", "tokenize", "tokenizer"]
    manifest_text = repr(plan_of({"pii": {"replacement": "pseudonym"}}))
    assert "key-two" not in manifest_text


def test_a_plug_in_that_cannot_be_imported_is_one_error_line():
    import os
    import subprocess
    import sys

    env = {**os.environ, "CRAWL2LLM_STAGES": "no_such_stage_module"}
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "--help"], env=env, capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: CRAWL2LLM_STAGES: module 'no_such_stage_module' cannot be imported "
        "(No module named 'no_such_stage_module'); is it on PYTHONPATH?"
    ]


def test_the_pipeline_chains_the_post_training_stages_the_config_gives():
    """After evaluate, each stage of the table the config fills (sft, classify) runs on the trained
    model, up to stop_after; one left empty is left out."""
    from flows.config import STAGES, validate_config
    from flows.increments import run_post_training

    calls = []

    def run(name, stage_flow, source, cfg):
        calls.append((name, stage_flow.name, source, type(cfg).__name__))
        return {"url": f"store/{name}/x"}

    trained = {"url": "store/train/abc"}
    config = validate_config({"store": "s", "inputs": ["x"], "sft": {"data": {"files": ["a.json"]}}})
    assert run_post_training(config, trained, STAGES.index("classify"), run) == {"sft": {"url": "store/sft/x"}}
    assert calls == [("sft", "sft", "store/train/abc", "SFTConfig")]
    calls.clear()
    config = validate_config(
        {
            "store": "s",
            "inputs": ["x"],
            "sft": {"data": {"files": ["a.json"]}},
            "classify": {"data_file": "sms.tsv"},
            "stop_after": "sft",
        }
    )
    run_post_training(config, trained, STAGES.index(config.stop_after), run)
    assert [c[0] for c in calls] == ["sft"]
    calls.clear()
    run_post_training(config, trained, STAGES.index("classify"), run)
    assert [c[:2] for c in calls] == [("sft", "sft"), ("classify", "classify")]
    # dpo starts from the sft output when the run made one, else from the trained model
    calls.clear()
    prefs = {"data": {"files": ["pairs.json"]}}
    config = validate_config({"store": "s", "inputs": ["x"], "sft": {"data": {"files": ["a.json"]}}, "dpo": prefs})
    run_post_training(config, trained, STAGES.index("dpo"), run)
    assert [c[:3] for c in calls] == [("sft", "sft", "store/train/abc"), ("dpo", "dpo", "store/sft/x")]
    calls.clear()
    run_post_training(validate_config({"store": "s", "inputs": ["x"], "dpo": prefs}), trained, STAGES.index("dpo"), run)
    assert calls == [("dpo", "dpo", "store/train/abc", "DPOConfig")]
