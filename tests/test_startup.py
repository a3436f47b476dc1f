"""``trustorch --help`` imports no model, store or graph library, and lists every command with
the help its own sub-app gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import MOUNTS, build_app, main

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "chromadb", "langgraph", "netcal", "openai", "sklearn")
LOADED_MODULES = """
import contextlib, io, json, sys
from orchestrator.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = main(sys.argv[1:])
print(json.dumps({"code": code, "help": out.getvalue(), "modules": sorted(sys.modules)}))
"""


def modules_after(*argv: str) -> dict:
    """Run the CLI with ``argv`` in a fresh interpreter; its exit code, output and modules."""
    done = subprocess.run(
        [sys.executable, "-c", LOADED_MODULES, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)


def top_level(modules: list[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_root_help_imports_no_heavy_library_and_no_command():
    seen = modules_after("--help")
    assert seen["code"] == 0 and "Commands" in seen["help"]
    loaded = top_level(seen["modules"])
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    # the commands themselves are not imported to be listed, nor the layers beneath them
    assert not loaded & {"agents", "rag", "eval", "numpy", "pydantic"}
    assert "orchestrator.run_cli" not in seen["modules"]
    for name in MOUNTS:
        assert name in seen["help"]


def test_eval_help_imports_the_eval_commands_only():
    seen = modules_after("eval", "--help")
    assert seen["code"] == 0 and "replay" in seen["help"]
    loaded = top_level(seen["modules"])
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    assert "orchestrator.run_cli" not in seen["modules"]
    assert "orchestrator.demo.cli" not in seen["modules"]


def test_the_listed_help_is_each_sub_apps_own(capsys):
    assert main(["--help"]) == 0
    listed = capsys.readouterr().out
    build_app(set(MOUNTS))(args=["--help"], prog_name="trustorch", standalone_mode=False)
    assert capsys.readouterr().out == listed


@pytest.mark.parametrize("name", list(MOUNTS))
def test_each_command_runs_after_it_is_loaded(name: str, capsys):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"trustorch {name}" in out and "not loaded" not in out
