"""Usage errors and known errors reach the user as one line and a non-zero exit code."""

from __future__ import annotations

import pytest

from orchestrator.cli import main


@pytest.mark.parametrize(
    ("argv", "message", "code"),
    [
        (["run", "leaves", "-o", "x.jsonl"], "Missing option '--agent'", 2),
        (["run", "leaves", "-a", "clip", "-o", "x.jsonl", "--nope"], "No such option: --nope", 2),
        (["run", "leaves", "-a", "clip", "-o", "x.jsonl", "-j", "abc"], "'--concurrency'", 2),
        (["eval", "calibration"], "Missing argument 'file'", 2),
        (["no-such-command"], "No such command 'no-such-command'", 2),
        (["eval", "calibration", "missing.csv"], "missing.csv: no such file", 1),
    ],
)
def test_errors_are_one_line(argv, message, code, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    from core.errors import InputError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError):
        main(["eval", "calibration", "missing.csv", "--debug"])


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert "trustorch" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [[], ["eval"], ["index"]])
def test_a_group_without_a_command_prints_help_and_no_empty_error(argv, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Usage: trustorch" in captured.out and "Commands" in captured.out
    assert captured.err == ""


def test_version_prints_the_installed_version(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"trustorch {version('trust-orchestrator')}\n"


def test_tables_keep_whole_column_names_when_piped(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    done = subprocess.run(
        [
            *(sys.executable, "-c", "from orchestrator.cli import entry; entry()"),
            *("eval", "replay", "study:case1", "--seed", "0", "--policy", "majority"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "vlm_calls_per_image" in done.stdout and "…" not in done.stdout


def test_every_command_lists_a_one_line_help_and_examples_indented_alike():
    import inspect
    import re

    import typer

    from orchestrator.cli import MOUNTS, build_app

    def commands(group, path):
        for name, sub in getattr(group, "commands", {}).items():
            yield from (
                commands(sub, [*path, name])
                if hasattr(sub, "commands")
                else [([*path, name], inspect.cleandoc(sub.help or ""))]
            )

    found = list(commands(typer.main.get_command(build_app(set(MOUNTS))), []))
    assert len(found) > 10
    for path, text in found:
        assert text and "\n" not in text.split("\n\n")[0], path
        examples = re.findall(r"^( *)trustorch ", text, re.MULTILINE)
        assert set(examples) <= {"  "}, (path, set(examples))


def test_an_unknown_agent_kind_names_the_kinds_each_command_takes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["agents", "predict", "x.png", "--agent", "nope:x"]) == 1
    err = capsys.readouterr().err
    assert "hf-vlm:<hub id or folder>; trustorch run also takes retrieval, replay:" in err
    assert main(["run", "x.png", "--agent", "nope:x", "-o", "o.jsonl"]) == 1
    err = capsys.readouterr().err
    assert "retrieval, replay:<file>#<agent>, py:" in err and "also takes" not in err
