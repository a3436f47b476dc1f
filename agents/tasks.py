"""Task presets (``prompts/tasks/*.json``) and user task files."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from agents.errors import InputError
from agents.types import Task


def preset_names() -> list[str]:
    folder = resources.files("prompts") / "tasks"
    return sorted(
        p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json")
    )


def load_task(name_or_path: str | Path) -> Task:
    """Load a preset by name (``apple-leaf``) or a task JSON file by path."""
    text: str
    source: str
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise InputError("no such task file", path=str(path))
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        preset = resources.files("prompts") / "tasks" / f"{name_or_path}.json"
        if not preset.is_file():
            raise InputError(
                f"unknown task '{name_or_path}' (presets: {', '.join(preset_names())}; "
                "or pass a task JSON file)"
            )
        text, source = preset.read_text(encoding="utf-8"), f"preset {name_or_path}"
    try:
        return Task.model_validate(json.loads(text))
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON: {e.msg}", path=source, line=e.lineno) from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        raise InputError(first["msg"], path=source, field=where) from None
