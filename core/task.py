"""The classification task (labels, descriptions, synonyms), its presets
(``prompts/tasks/*.json``) and user task files; and the one rule that says when two spellings
name the same label (``label_key``), which every place a label enters goes through: a task's
``normalise_label`` (recorded answers, manifests, folder names, agent replies) and, for a file
read without a task, ``label_spellings``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from core.errors import InputError
from core.jsonio import parse_json, read_text_file
from core.validation import field_path, first_error

_SEPARATORS = re.compile(r"[\s_\-]+")


def label_key(text: str) -> str:
    """What the spellings of one label share: surrounding quotes, dots and spaces dropped,
    case folded, each run of spaces, ``_`` and ``-`` as one ``-`` ('BLACK ROT', 'black_rot'
    and 'Black-Rot' all give 'black-rot')."""
    return _SEPARATORS.sub("-", text.strip().strip("\"'.` ").casefold()).strip("-")


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
        if len({label_key(label) for label in labels}) != len(labels):
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

    _by_key: dict[str, str] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: object) -> None:
        by_key = {label_key(s): target for s, target in self.synonyms.items()}
        by_key.update({label_key(label): label for label in self.labels})
        self._by_key = by_key

    def index(self, label: str) -> int:
        return self.labels.index(label)

    def normalise_label(self, text: str | None) -> str | None:
        """Map free text ('Black rot', 'BLACK_ROT', 'apple scab') to a label, or None: the
        label or synonym with the same ``label_key``."""
        if text is None:
            return None
        return self._by_key.get(label_key(text))

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
        loc, message = first_error(e)
        raise InputError(message, path=source, field=field_path(loc) or None) from None


@dataclass(frozen=True)
class LabelSpellings:
    """The labels of a file read without a task, where spellings that differ only in case or
    separators (one ``label_key``) are one label, spelled as the file spells it most often.

    ``merged``: per label, the other spellings of it that were seen (empty when the file
    spells every label one way)."""

    labels: tuple[str, ...]
    merged: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    by_key: Mapping[str, str] = field(default_factory=dict)

    def normalise(self, text: str | None) -> str | None:
        """The label ``text`` is a spelling of, or None."""
        if text is None:
            return None
        return self.by_key.get(label_key(text))

    def note(self) -> str | None:
        """One line saying which spellings were read as one label (None when none were)."""
        if not self.merged:
            return None
        parts = [
            f"{', '.join(repr(s) for s in others)} as {label!r}"
            for label, others in sorted(self.merged.items())
        ]
        return "labels spelled more than one way were merged: " + "; ".join(parts)


def label_spellings(labels: Iterable[str], also_seen: Iterable[str] = ()) -> LabelSpellings:
    """The labels named by ``labels`` (every occurrence: the most frequent spelling of each
    ``label_key`` names it, ties going to the first in sorted order), sorted; ``also_seen``
    (predictions, score keys) are other spellings that may be merged into them but add none."""
    counts = Counter(text.strip() for text in labels if label_key(text))
    by_key: dict[str, list[str]] = {}
    for text in sorted(counts, key=lambda t: (-counts[t], t)):
        by_key.setdefault(label_key(text), []).append(text)
    for text in {t.strip() for t in also_seen}:
        spellings = by_key.get(label_key(text))
        if spellings is not None and text not in spellings:
            spellings.append(text)
    chosen = {key: spellings[0] for key, spellings in by_key.items()}
    merged = {
        spellings[0]: tuple(sorted(spellings[1:]))
        for spellings in by_key.values()
        if len(spellings) > 1
    }
    return LabelSpellings(labels=tuple(sorted(chosen.values())), merged=merged, by_key=chosen)
