"""The classification task (labels, descriptions, synonyms), its presets
(``prompts/tasks/*.json``) and user task files."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from core.errors import InputError
from core.jsonio import parse_json, read_text_file


def _label_key(text: str) -> str:
    return re.sub(r"[\s_\-]+", "-", text.strip().lower())


class Task(BaseModel):
    """A classification task: ordered labels, a visual description per label, prompt names."""

    model_config = ConfigDict(frozen=True)

    name: str
    labels: tuple[str, ...]
    descriptions: dict[str, str]
    title: str = ""
    subject: str = "the image"
    synonyms: dict[str, str] = {}
    prompts: dict[str, str] = {"agent": "agent", "reevaluate": "reevaluate", "clip": "clip"}

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        if len(labels) < 2:
            raise ValueError("a task needs at least two labels")
        if len({_label_key(label) for label in labels}) != len(labels):
            raise ValueError(f"labels must be distinct: {list(labels)}")
        return labels

    @model_validator(mode="after")
    def _descriptions_cover_labels(self) -> Task:
        missing = [label for label in self.labels if label not in self.descriptions]
        if missing:
            raise ValueError(f"descriptions missing for labels {missing}")
        unknown = [t for t in self.synonyms.values() if t not in self.labels]
        if unknown:
            raise ValueError(f"synonyms point to unknown labels {unknown}")
        return self

    def index(self, label: str) -> int:
        return self.labels.index(label)

    def normalise_label(self, text: str | None) -> str | None:
        """Map free text ('Black rot', 'BLACK_ROT', 'apple scab') to a label, or None."""
        if text is None:
            return None
        key = _label_key(text.strip().strip("\"'.` "))
        if not key:
            return None
        by_key = {_label_key(label): label for label in self.labels}
        by_key.update({_label_key(s): target for s, target in self.synonyms.items()})
        return by_key.get(key)

    def require_label(
        self,
        text: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> str:
        """The label ``text`` names (``normalise_label``); an InputError at ``path``, ``line``
        and ``field`` when it names none."""
        label = self.normalise_label(text)
        if label is None:
            raise InputError(
                f"label {text!r} is not one of task {self.name}'s labels "
                f"({', '.join(self.labels)})",
                path=path,
                line=line,
                field=field,
            )
        return label


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
        text, source = read_text_file(path, what="task file"), str(path)
    else:
        preset = resources.files("prompts") / "tasks" / f"{name_or_path}.json"
        if not preset.is_file():
            raise InputError(
                f"unknown task '{name_or_path}' (presets: {', '.join(preset_names())}; "
                "or pass a task JSON file)"
            )
        text, source = preset.read_text(encoding="utf-8"), f"preset {name_or_path}"
    data = parse_json(text, source=source)
    try:
        return Task.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        raise InputError(first["msg"], path=source, field=where) from None
