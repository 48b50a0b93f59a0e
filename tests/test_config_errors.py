"""Every bad config (YAML file, --set, a stage's --config and options) stops before any work with one
line on stderr, `error: ...`, naming the field and what is allowed, and exit status 2.

Each case runs the real command in this process (flows.cli.main); two run `python -m flows.cli` in a
subprocess. "Before any work": PREFECT_HOME (where the Prefect server would keep its pid and
database) is never created and neither is the store; PREFECT_API_URL names a port nothing listens
on, so a command that got as far as the server would fail with another message.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.cli import main

BASE = "inputs: ['{tmp}/a.warc.gz']\nstore: '{tmp}/store'\n"
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
)

try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    HAS_CUDA = False

# (id, files to write {name: text or bytes}, argv, what the line must name: a string or several). {tmp} is the
# test's folder. A stage's own config names its fields as written there (gopher.min_words, not quality.gopher.min_words).
CASES = [
    # -- the YAML file of `crawl2llm run` -------------------------------------------------------
    ("yaml-list", {"c.yaml": "- a\n- b\n"}, ["run", "c.yaml"], "mapping"),
    ("yaml-scalar", {"c.yaml": "hello\n"}, ["run", "c.yaml"], "mapping"),
    ("yaml-syntax", {"c.yaml": "inputs: [unclosed\n"}, ["run", "c.yaml"], "line 2"),
    ("yaml-tab-indent", {"c.yaml": "quality:\n\tmin_words: 3\n"}, ["run", "c.yaml"], "line 2"),
    ("yaml-empty", {"c.yaml": ""}, ["run", "c.yaml"], "inputs"),
    ("yaml-missing", {}, ["run", "nope.yaml"], "nope.yaml"),
    ("yaml-directory", {"d/x": ""}, ["run", "d"], "not a file"),
    ("yaml-binary", {"c.yaml": b"\xff\xfe\x00\x01inputs: x\n"}, ["run", "c.yaml"], "UTF-8"),
    ("yaml-huge-file", {"c.yaml": BASE + "# " + "x" * (2 << 20) + "\n"}, ["run", "c.yaml"], "MiB"),
    (
        "yaml-python-tag",
        {"c.yaml": BASE + "x: !!python/object/apply:os.system ['true']\n"},
        ["run", "c.yaml"],
        "!!python/object/apply:os.system",
    ),
    ("yaml-custom-tag", {"c.yaml": BASE + "quality: !include q.yaml\n"}, ["run", "c.yaml"], "!include"),
    ("yaml-duplicate-key", {"c.yaml": BASE + "store: other\n"}, ["run", "c.yaml"], "store"),
    (
        "yaml-duplicate-nested",
        {"c.yaml": BASE + "quality:\n  gopher:\n    min_words: 1\n    min_words: 2\n"},
        ["run", "c.yaml"],
        "quality.gopher.min_words",
    ),
    ("yaml-billion-laughs", {"c.yaml": BASE + LAUGHS}, ["run", "c.yaml"], "alias"),
    ("yaml-recursive-alias", {"c.yaml": BASE + "evaluate: &e {prompts: *e}\n"}, ["run", "c.yaml"], "recursive"),
    ("yaml-deep-nesting", {"c.yaml": BASE + "x: " + "[" * 5000 + "]" * 5000 + "\n"}, ["run", "c.yaml"], "nested"),
    ("yaml-two-documents", {"c.yaml": BASE + "---\nstore: b\n"}, ["run", "c.yaml"], "single document"),
    ("yaml-newline-in-key", {"c.yaml": BASE + '"bad\\nkey": 1\n'}, ["run", "c.yaml"], "bad\\nkey"),
    # -- fields --------------------------------------------------------------------------------
    ("unknown-top", {"c.yaml": BASE + "stroe: x\n"}, ["run", "c.yaml"], "stroe"),
    ("unknown-nested", {"c.yaml": BASE + "quality: {min_word: 3}\n"}, ["run", "c.yaml"], "quality.min_word"),
    (
        "unknown-in-recipe",
        {"c.yaml": BASE + "quality: {gopher: {min_word: 3}}\n"},
        ["run", "c.yaml"],
        ("quality.gopher.min_word", "did you mean min_words?"),
    ),
    (
        "flat-and-nested-differ",
        {"c.yaml": BASE + "quality: {min_words: 3, gopher: {min_words: 4}}\n"},
        ["run", "c.yaml"],
        ("quality.min_words (3)", "quality.gopher.min_words (4)"),
    ),
    (
        "type-str-for-int",
        {"c.yaml": BASE + "quality: {gopher: {min_words: many}}\n"},
        ["run", "c.yaml"],
        "quality.gopher.min_words",
    ),
    ("type-list-for-dict", {"c.yaml": BASE + "quality: [1, 2]\n"}, ["run", "c.yaml"], "quality"),
    (
        "type-bool-for-int",
        {"c.yaml": BASE + "train: {schedule: {max_steps: yes}}\n"},
        ["run", "c.yaml"],
        "train.schedule.max_steps",
    ),
    (
        "type-float-for-int",
        {"c.yaml": BASE + "train: {schedule: {max_steps: 2.5}}\n"},
        ["run", "c.yaml"],
        "train.schedule.max_steps",
    ),
    # a flat key of before the groups (deprecated) is checked at its new place, and named there
    ("flat-train-key", {"c.yaml": BASE + "train: {max_steps: yes}\n"}, ["run", "c.yaml"], "train.schedule.max_steps"),
    ("null-store", {"c.yaml": "inputs: ['{tmp}/a.warc.gz']\nstore: null\n"}, ["run", "c.yaml"], "store"),
    ("null-section", {"c.yaml": BASE + "train: null\n"}, ["run", "c.yaml"], "train"),
    ("empty-store", {"c.yaml": "inputs: ['{tmp}/a.warc.gz']\nstore: ''\n"}, ["run", "c.yaml"], "store"),
    ("string-for-list", {"c.yaml": "inputs: '{tmp}/a.warc.gz'\n"}, ["run", "c.yaml"], "inputs"),
    (
        "huge-int",
        {"c.yaml": BASE + "train: {schedule: {max_steps: 100000000000000000000000000}}\n"},
        ["run", "c.yaml"],
        "train.schedule.max_steps",
    ),
    (
        "huge-block-size",
        {"c.yaml": BASE + "train: {model: {block_size: 10000000000}}\n"},
        ["run", "c.yaml"],
        "train.model.block_size",
    ),
    ("negative", {"c.yaml": BASE + "dedup: {num_perm: -1}\n"}, ["run", "c.yaml"], "dedup.num_perm"),
    *(
        (
            name,
            {"c.yaml": BASE + f"train: {{optimizer: {{learning_rate: {v}}}}}\n"},
            ["run", "c.yaml"],
            "train.optimizer.learning_rate",
        )
        for name, v in (("zero-lr", "0"), ("inf-lr", ".inf"), ("nan-lr", ".nan"))
    ),
    (
        "min-lr-above-peak",
        {"c.yaml": BASE + "train: {optimizer: {learning_rate: 0.001}, schedule: {min_lr: 0.01}}\n"},
        ["run", "c.yaml"],
        "train: schedule.min_lr",
    ),
    (
        "fraction-above-1",
        {"c.yaml": BASE + "tokenize: {val_fraction: 1.5}\n"},
        ["run", "c.yaml"],
        "tokenize.val_fraction",
    ),
    (
        "fraction-in-dict",
        {"c.yaml": BASE + "quality: {gopher: {max_top_ngram_chars: {2: 5}}}\n"},
        ["run", "c.yaml"],
        "quality.gopher.max_top_ngram_chars",
    ),
    (
        "ngram-size-zero",
        {"c.yaml": BASE + "quality: {gopher: {max_dup_ngram_chars: {0: 0.1}}}\n"},
        ["run", "c.yaml"],
        "quality.gopher.max_dup_ngram_chars: key 0",
    ),
    ("bad-enum", {"c.yaml": BASE + "ingest: {extractor: bs4}\n"}, ["run", "c.yaml"], "ingest.extractor"),
    ("bad-rule", {"c.yaml": BASE + "quality: {rules: [gopher_foo]}\n"}, ["run", "c.yaml"], "quality.rules"),
    ("bad-stop-after", {"c.yaml": BASE + "stop_after: crawl\n"}, ["run", "c.yaml"], "stop_after"),
    ("bad-language", {"c.yaml": BASE + "ingest: {languages: [english]}\n"}, ["run", "c.yaml"], "ingest.languages"),
    ("bad-mime-type", {"c.yaml": BASE + "ingest: {mime_types: [html]}\n"}, ["run", "c.yaml"], "ingest.mime_types"),
    (
        "heads-divide-width",
        {"c.yaml": BASE + "train: {model: {n_embd: 100, n_head: 3}}\n"},
        ["run", "c.yaml"],
        "train.model.n_embd",
    ),
    (
        "rotary-odd-head",
        {"c.yaml": BASE + "train: {model: {positions: rotary, n_embd: 12, n_head: 4}}\n"},
        ["run", "c.yaml"],
        "train.model.positions",
    ),
    (
        "processes-need-plan",
        {"c.yaml": BASE + "train: {launch: {nproc_per_node: 2}}\n"},
        ["run", "c.yaml"],
        "train.launch.parallel",
    ),
    ("bands-exceed-perm", {"c.yaml": BASE + "dedup: {bands: 20, rows: 8}\n"}, ["run", "c.yaml"], "dedup"),
    (
        "min-above-max",
        {"c.yaml": BASE + "quality: {gopher: {min_words: 500, max_words: 100}}\n"},
        ["run", "c.yaml"],
        "quality.gopher.min_words 500 > max_words 100",
    ),
    (
        "task-file-missing",
        {"c.yaml": BASE + "evaluate: {tasks: {hellaswag: '{tmp}/nope.jsonl'}}\n"},
        ["run", "c.yaml"],
        "evaluate.tasks",
    ),
    (
        "text-file-missing",
        {"c.yaml": BASE + "evaluate: {text_files: {wiki: '{tmp}/nope.txt'}}\n"},
        ["run", "c.yaml"],
        "evaluate.text_files",
    ),
    (
        "blocklist-missing",
        {"c.yaml": BASE + "ingest: {url_blocklist_files: ['{tmp}/nope.txt']}\n"},
        ["run", "c.yaml"],
        "ingest.url_blocklist_files",
    ),
    (
        "eval-data-missing",
        {"c.yaml": BASE + "evaluate: {data: '{tmp}/store/tokenize/0123'}\n"},
        ["run", "c.yaml"],
        "evaluate.data",
    ),
    ("dask-address", {"c.yaml": BASE + "dask_address: not an address\n"}, ["run", "c.yaml"], "dask_address"),
    ("dask-port", {"c.yaml": BASE + "dask_address: tcp://scheduler:99999\n"}, ["run", "c.yaml"], "dask_address"),
    ("input-limit-zero", {"c.yaml": BASE + "input_limit: 0\n"}, ["run", "c.yaml"], "input_limit"),
    ("workers-negative", {"c.yaml": BASE + "workers: -1\n"}, ["run", "c.yaml"], "workers"),
    ("inputs-and-crawl", {"c.yaml": BASE + "crawl: {seeds: ['http://example.com/']}\n"}, ["run", "c.yaml"], "inputs"),
    ("crawl-bad-seed", {"c.yaml": "crawl: {seeds: ['ftp://example.com/']}\n"}, ["run", "c.yaml"], "crawl.seeds"),
    (
        "crawl-zero-pages",
        {"c.yaml": "crawl: {seeds: ['http://example.com/'], max_pages: 0}\n"},
        ["run", "c.yaml"],
        "crawl.max_pages",
    ),
    (
        "crawl-zero-deadline",
        {"c.yaml": "crawl: {seeds: ['http://example.com/'], fetch_deadline_s: 0}\n"},
        ["run", "c.yaml"],
        "crawl.fetch_deadline_s",
    ),
    (
        "crawl-old-scope",
        {"c.yaml": "crawl: {seeds: ['http://example.com/'], scope: same-host}\n"},
        ["run", "c.yaml"],
        ("crawl.scope", "same-origin"),
    ),
    (
        "inputs-missing",
        {"c.yaml": "inputs: ['{tmp}/gone.warc.gz']\nstore: '{tmp}/store'\n"},
        ["run", "c.yaml"],
        "gone.warc.gz",
    ),
    # a named file that is not there is a mistake even for a series (a glob or folder with no file yet is
    # the first night of one: test_incremental's nothing-to-do-yet test)
    (
        "incremental-inputs-missing",
        {"c.yaml": "inputs: ['{tmp}/gone.warc.gz']\nstore: '{tmp}/store'\nincremental: true\n"},
        ["run", "c.yaml"],
        "gone.warc.gz",
    ),
    (
        "pseudonym-without-secret",
        {"c.yaml": BASE + "pii: {replacement: pseudonym}\n"},
        ["run", "c.yaml"],
        "CRAWL2LLM_PII_SECRET",
    ),
    pytest.param(
        "train-cuda-without-gpu",
        {"c.yaml": BASE + "train: {launch: {device: cuda}}\n"},
        ["run", "c.yaml"],
        "train.launch.device",
        marks=pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA GPU"),
    ),
    # -- --set -------------------------------------------------------------------------------------
    (
        "set-no-equals",
        {"c.yaml": BASE},
        ["run", "c.yaml", "--set", "quality.gopher.min_words"],
        "quality.gopher.min_words",
    ),
    ("set-through-scalar", {"c.yaml": BASE}, ["run", "c.yaml", "--set", "train=3", "--set", "train.lr=1"], "train"),
    ("set-into-string", {"c.yaml": BASE}, ["run", "c.yaml", "--set", "store.x=1"], "store"),
    ("set-empty-key", {"c.yaml": BASE}, ["run", "c.yaml", "--set", "=3"], "--set"),
    ("set-empty-segment", {"c.yaml": BASE}, ["run", "c.yaml", "--set", "quality..min_words=3"], "quality..min_words"),
    ("set-empty-value", {"c.yaml": BASE}, ["run", "c.yaml", "--set", "store="], "store"),
    ("set-string-for-list", {"c.yaml": BASE}, ["run", "c.yaml", "--set", "inputs=a.warc.gz"], "inputs"),
    (
        "set-bad-yaml-value",
        {"c.yaml": BASE},
        ["run", "c.yaml", "--set", "quality.gopher.min_words=["],
        "quality.gopher.min_words",
    ),
    ("set-python-tag", {"c.yaml": BASE}, ["run", "c.yaml", "--set", "store=!!python/name:os.system"], "store"),
    (
        "set-nan",
        {"c.yaml": BASE},
        ["run", "c.yaml", "--set", "train.optimizer.learning_rate=nan"],
        "train.optimizer.learning_rate",
    ),
    ("set-typo", {"c.yaml": BASE}, ["run", "c.yaml", "--set", "quality.min_word=3"], "quality.min_word"),
    # -- stage commands --------------------------------------------------------------------------
    ("stage-config-list", {"q.yaml": "- 1\n"}, ["quality", "{tmp}/src", "--config", "q.yaml"], "mapping"),
    ("stage-config-missing", {}, ["quality", "{tmp}/src", "--config", "nope.yaml"], "nope.yaml"),
    ("stage-config-directory", {"d/x": ""}, ["quality", "{tmp}/src", "--config", "d"], "not a file"),
    ("stage-config-syntax", {"q.yaml": "min_words: [\n"}, ["quality", "{tmp}/src", "--config", "q.yaml"], "line"),
    (
        "stage-config-duplicate",
        {"q.yaml": "min_words: 1\nmin_words: 2\n"},
        ["quality", "{tmp}/src", "--config", "q.yaml"],
        ("q.yaml", "min_words"),
    ),
    ("stage-config-binary", {"q.yaml": b"\x80\x81"}, ["quality", "{tmp}/src", "--config", "q.yaml"], "UTF-8"),
    (
        "stage-config-typo",
        {"q.yaml": "min_word: 3\n"},
        ["quality", "{tmp}/src", "--config", "q.yaml"],
        ("quality config", "min_word"),
    ),
    ("stage-set-typo", {}, ["quality", "{tmp}/src", "--set", "min_word=3"], ("quality config", "min_word")),
    (
        "stage-set-through-scalar",
        {},
        ["quality", "{tmp}/src", "--set", "gopher.min_words=3", "--set", "gopher.min_words.x=1"],
        "gopher.min_words.x",
    ),
    ("stage-workers-negative", {}, ["quality", "{tmp}/src", "--workers", "-1"], "--workers"),
    ("stage-workers-not-int", {}, ["dedup", "{tmp}/src", "--workers", "many"], "--workers"),
    ("dedup-threshold", {}, ["dedup", "{tmp}/src", "--set", "threshold=2"], ("dedup config", "threshold")),
    ("tokenize-config-scalar", {"t.yaml": "32768\n"}, ["tokenize", "{tmp}/src", "--config", "t.yaml"], "mapping"),
    ("pii-pseudonym", {}, ["pii", "{tmp}/src", "--set", "replacement=pseudonym"], "CRAWL2LLM_PII_SECRET"),
    (
        "train-heads",
        {},
        ["train", "{tmp}/src", "--set", "model.n_embd=100", "--set", "model.n_head=3"],
        ("train config", "model.n_embd"),
    ),
    (
        "train-inf",
        {},
        ["train", "{tmp}/src", "--set", "optimizer.learning_rate=.inf"],
        ("train config", "optimizer.learning_rate"),
    ),
    ("evaluate-device", {}, ["evaluate", "{tmp}/src", "--set", "device=tpu"], ("evaluate config", "device")),
    (
        "evaluate-task-missing",
        {},
        ["evaluate", "{tmp}/src", "--set", "tasks={{piqa: {tmp}/nope.jsonl}}"],
        ("evaluate config", "tasks", "piqa"),
    ),
    (
        "crawl-set-zero",
        {},
        ["crawl", "http://example.com/", "--store", "{tmp}/store", "--set", "max_pages=0"],
        ("crawl config", "max_pages"),
    ),
    (
        "crawl-set-deadline",
        {},
        ["crawl", "http://example.com/", "--store", "{tmp}/store", "--set", "fetch_deadline_s=-1"],
        ("crawl config", "fetch_deadline_s"),
    ),
    ("crawl-bad-seed-arg", {}, ["crawl", "ftp://example.com/", "--store", "{tmp}/store"], ("crawl config", "seeds")),
    ("ingest-limit-zero", {}, ["ingest", "{tmp}/a.warc.gz", "--store", "{tmp}/store", "--limit", "0"], "--limit"),
    ("ingest-limit-not-int", {}, ["ingest", "{tmp}/a.warc.gz", "--store", "{tmp}/store", "--limit", "ten"], "--limit"),
    (
        "ingest-workers-negative",
        {},
        ["ingest", "{tmp}/a.warc.gz", "--store", "{tmp}/store", "--workers", "-1"],
        "--workers",
    ),
    (
        "ingest-set-language",
        {},
        ["ingest", "{tmp}/a.warc.gz", "--store", "{tmp}/store", "--set", "languages=[EN]"],
        ("ingest config", "languages"),
    ),
    (
        "ingest-blocklist-missing",
        {},
        ["ingest", "{tmp}/a.warc.gz", "--store", "{tmp}/store", "--set", "url_blocklist_files=[{tmp}/nope.txt]"],
        ("ingest config", "url_blocklist_files"),
    ),
    ("ingest-inputs-missing", {}, ["ingest", "{tmp}/gone.warc.gz", "--store", "{tmp}/store"], "gone.warc.gz"),
    ("stage-source-missing", {}, ["quality", "{tmp}/gone"], "gone"),
    ("demo-steps-negative", {}, ["demo", "--store", "{tmp}/store", "--steps", "-1"], "--steps"),
    ("no-command", {}, [], "COMMAND"),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder with one input file and one stage output, as the cases name them; Prefect pointed
    where nothing answers."""
    (tmp_path / "a.warc.gz").write_bytes(b"not parsed before the config is checked")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "manifest.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.delenv("CRAWL2LLM_PII_SECRET", raising=False)
    return tmp_path


def _prepare(tmp: Path, files: dict, argv: list[str]) -> list[str]:
    for name, content in files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content.replace("{tmp}", str(tmp)))
    return [a.replace("{tmp}", str(tmp)).replace("{{", "{").replace("}}", "}") for a in argv]


def _check(rc, err: str, tmp: Path, names: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for name in (names,) if isinstance(names, str) else names:
        assert name in lines[0], err
    assert not (tmp / "prefect").exists(), "the Prefect home was created: the command went past the config check"
    assert not (tmp / "store").exists(), "the store was created"


def _params():
    for c in CASES:
        if hasattr(c, "marks"):  # a pytest.param
            yield pytest.param(*c.values[1:], id=c.values[0], marks=c.marks)
        else:
            yield pytest.param(*c[1:], id=c[0])


@pytest.mark.parametrize("files, argv, names", list(_params()))
def test_bad_config_is_one_line(files, argv, names, workdir, capsys):
    argv = _prepare(workdir, files, argv)
    t0 = time.monotonic()
    try:
        rc = main(argv)
    except SystemExit as e:  # what the interpreter would do with it
        rc = e.code if isinstance(e.code, int) or e.code is None else 1
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    assert time.monotonic() - t0 < 20
    _check(rc, capsys.readouterr().err, workdir, names)


@pytest.mark.parametrize(
    "argv, names",
    [
        (["run", "c.yaml", "--set", "quality.min_word=3"], "quality.min_word"),
        (["train", "src", "--set", "model.n_embd=100", "--set", "model.n_head=3"], "model.n_embd"),
    ],
)
def test_the_real_command(argv, names, workdir):
    (workdir / "c.yaml").write_text(BASE.replace("{tmp}", str(workdir)))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.run(
        [sys.executable, "-m", "flows.cli", *argv], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
    )
    _check(p.returncode, p.stderr, workdir, names)
    assert p.stdout == ""


def test_a_config_error_a_run_finds_is_one_line_without_traceback(prefect_server, tmp_path, monkeypatch, capfd):
    """What only the data can tell (here: block_size longer than the corpus) fails inside the train
    flow; the user still gets one `error:` line naming the field, and no traceback on the terminal."""
    import json

    import pyarrow as pa

    from storage import Store

    url, env = prefect_server
    monkeypatch.setenv("PREFECT_API_URL", url)
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", env["PREFECT_API_AUTH_STRING"])
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    docs = Store(str(tmp_path / "store")).stage("pii", "docs")
    texts = [f"Paragraph {i}: the quick brown fox jumps over the lazy dog {i} times." for i in range(40)]
    docs.write_parquet("data/part-00000.parquet", pa.table({"id": [f"d/{i}" for i in range(40)], "text": texts}))
    docs.commit({"shards": [{"index": 0}]})
    assert main(["tokenize", docs.url(), "--set", "vocab_size=300", "--workers", "0"]) == 0
    tok = json.loads(capfd.readouterr().out)["url"]
    assert (
        main(
            [
                "train",
                tok,
                "--set",
                "model.block_size=100000",
                "--set",
                "launch.device=cpu",
                "--set",
                "schedule.max_steps=1",
            ]
        )
        == 2
    )
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    assert err.splitlines()[-1].startswith("error: block_size: ") and "less than one window" in err, err


def test_a_deprecated_quality_key_still_works_with_one_warning_line(capsys):
    """quality's flat keys of before the recipes were nested: accepted, and the user is told."""
    from flows.config import validate
    from pipeline.quality import QualityConfig

    config = validate(QualityConfig, {"min_words": 30}, "q.yaml")
    assert config == QualityConfig(gopher={"min_words": 30})
    assert capsys.readouterr().err == "warning: q.yaml: quality.min_words is deprecated: use quality.gopher.min_words\n"


def test_a_deprecated_train_key_still_works_with_one_warning_line(capsys):
    """training's flat keys of before its groups: accepted at their new place, and the user is told."""
    from flows.config import validate
    from model.train import TrainConfig

    config = validate(TrainConfig, {"max_steps": 30}, "t.yaml")
    assert config == TrainConfig(schedule={"max_steps": 30})
    assert capsys.readouterr().err == "warning: t.yaml: train.max_steps is deprecated: use train.schedule.max_steps\n"
