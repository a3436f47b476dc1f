"""The README's Python example and task file do what the README says they do."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from core.task import load_task

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _block(section: str, language: str) -> str:
    found = re.search(rf"## {re.escape(section)}\n.*?```{language}\n(.*?)```", README, re.S)
    assert found, f"no {language} block under '## {section}'"
    return found.group(1)


def test_the_python_example_runs_offline_and_prints_what_the_readme_says(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(_block("Use it from Python", "python"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "rust-144.JPG rust rust 1.0\n"
    assert "It prints `rust-144.JPG rust rust 1.0`" in README


def test_the_task_example_loads_with_its_spellings_and_synonyms(tmp_path):
    task_file = tmp_path / "tomato.json"
    task_file.write_text(_block("Adding a task", "json"))
    task = load_task(task_file)
    assert task.labels == ("early-blight", "healthy", "leaf-mold")
    assert task.normalise_label("Early Blight") == "early-blight"
    assert task.normalise_label("early_blight") == "early-blight"
    assert task.normalise_label("alternaria") == "early-blight"
