"""The command line: help everywhere, and bad input stops before any work with a clear error."""

from __future__ import annotations

import pytest
import yaml

from flows.cli import STAGE_HELP, build_parser, main


@pytest.fixture(autouse=True)
def _prefect_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens: any server use would fail


@pytest.mark.parametrize("command", ["demo", "run", "config", "server", *STAGE_HELP])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([command, "--help"])
    assert e.value.code == 0
    assert "usage: crawl2llm" in capsys.readouterr().out


def _write(tmp_path, data) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_invalid_config_value_is_named(tmp_path, capsys, shared_data):
    cfg = _write(
        tmp_path,
        {
            "inputs": [str(shared_data("warc/cc-whirlwind.warc.gz"))],
            "store": str(tmp_path / "s"),
            "quality": {"gopher": {"min_words": -5}},
        },
    )
    assert main(["run", cfg]) == 2
    err = capsys.readouterr().err
    assert "quality.gopher.min_words" in err and "greater than or equal to 0" in err
    assert not (tmp_path / "s").exists()


def test_unknown_config_field_is_named(tmp_path, capsys, shared_data):
    cfg = _write(tmp_path, {"inputs": [str(shared_data("warc/cc-whirlwind.warc.gz"))], "dedup": {"treshold": 0.5}})
    assert main(["run", cfg]) == 2
    assert "dedup.treshold" in capsys.readouterr().err


def test_missing_input_message(tmp_path, capsys):
    cfg = _write(tmp_path, {"inputs": [str(tmp_path / "crawl-0001.warc.gz")], "store": str(tmp_path / "s")})
    assert main(["run", cfg]) == 2
    err = capsys.readouterr().err
    assert "input not found" in err and "crawl-0001.warc.gz" in err
    assert not (tmp_path / "s").exists()


def test_unreadable_input_is_named(tmp_path, capsys):
    import os

    bad = tmp_path / "locked.warc.gz"
    if os.geteuid() != 0:
        bad.write_bytes(b"x")
        bad.chmod(0)
    elif os.path.exists("/proc/self/mem"):
        bad.symlink_to("/proc/self/mem")  # root reads any file, but this one fails at the first read
    else:
        pytest.skip("running as root without /proc: no way to make a file that cannot be read")
    cfg = _write(tmp_path, {"inputs": [str(bad)], "store": str(tmp_path / "s")})
    assert main(["run", cfg]) == 2
    err = capsys.readouterr().err
    assert "not readable" in err and "locked.warc.gz" in err
    assert not (tmp_path / "s").exists()


def test_missing_config_file_and_bad_yaml(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: [unclosed\n")
    assert main(["run", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_inputs_or_crawl_required(tmp_path, capsys):
    assert main(["run", _write(tmp_path, {"store": "x"})]) == 2
    assert "either `inputs`" in capsys.readouterr().err


def test_config_prints_a_loadable_default(tmp_path, capsys):
    from flows.config import load_config

    assert main(["config", "--inputs", "a.warc.gz"]) == 0
    path = tmp_path / "default.yaml"
    path.write_text(capsys.readouterr().out)
    assert load_config(path).inputs == ["a.warc.gz"]


def test_server_refuses_a_named_server_that_does_not_answer(capsys):
    assert main(["server"]) == 2  # PREFECT_API_URL names port 9 (fixture above): nothing is started
    assert "does not answer" in capsys.readouterr().err
