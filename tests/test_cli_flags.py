"""One short flag means one thing in every command: ``-o`` is always the output file."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import typer

from orchestrator.cli import MOUNTS, build_app


def _commands(command: Any, path: str) -> list[tuple[str, Any]]:
    found = [(path, command)]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        found += _commands(sub, f"{path} {name}")
    return found


def short_flag_meanings() -> dict[str, dict[str, list[str]]]:
    """For each short flag (``-o``), the long names it stands for and the commands using each."""
    root = typer.main.get_command(build_app(set(MOUNTS)))
    meanings: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path, command in _commands(root, "trustorch"):
        for param in getattr(command, "params", []):
            names = [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]
            short = [n for n in names if n.startswith("-") and not n.startswith("--")]
            long = sorted(n for n in names if n.startswith("--"))
            for flag in short:
                meanings[flag][long[0] if long else flag].append(path)
    return meanings


def test_every_command_is_walked() -> None:
    meanings = short_flag_meanings()
    users = {path for by_long in meanings.values() for paths in by_long.values() for path in paths}
    assert {"trustorch run", "trustorch agents predict", "trustorch eval report"} <= users


def test_each_short_flag_has_one_meaning_across_commands() -> None:
    mixed = {
        flag: dict(by_long) for flag, by_long in short_flag_meanings().items() if len(by_long) > 1
    }
    assert mixed == {}


def test_dash_o_is_the_output_file() -> None:
    meanings = short_flag_meanings()
    assert set(meanings["-o"]) == {"--out"}
    assert "trustorch run" in meanings["-o"]["--out"]
