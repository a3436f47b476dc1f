"""Which agents this machine can run for the demo, and why the others were skipped.

Nothing is ever downloaded: CLIP loads from a local folder or from weights already in the
Hugging Face cache; retrieval needs CLIP and an index built for the task with that model. CLIP is
loaded at most once, here, and shared by the CLIP agent and the retrieval agent. Every other kind
of the agent registry says for itself whether it can run here (``AgentKind.probe``: a VLM when an
OpenAI-compatible endpoint or a local model folder is configured).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.clip_model import CLIP_MODEL_ENV, DEFAULT_CLIP_MODEL, ClipModel
from agents.errors import ModelLoadError
from agents.hf_vlm import HF_VLM_ENV
from agents.hub import local_weights_folder
from agents.registry import AgentRegistry, AgentStatus
from core.task import Task
from rag.errors import StoreError
from rag.store import INDEX_DIR_ENV


@dataclass
class Availability:
    """What was found: one status per candidate, the loaded CLIP, the index folder."""

    statuses: list[AgentStatus] = field(default_factory=list)
    clip: ClipModel | None = None
    index_dir: Path | None = None

    @property
    def available(self) -> list[AgentStatus]:
        return [s for s in self.statuses if s.available]

    @property
    def skipped(self) -> list[AgentStatus]:
        return [s for s in self.statuses if not s.available]

    def status(self, name: str) -> AgentStatus | None:
        return next((s for s in self.statuses if s.name == name), None)

    def missing_line(self) -> str:
        """The one-line error when no agent can run: what to provide."""
        return (
            "no agent can run on this machine: give CLIP weights (a local folder via "
            f"--clip-model DIR or {CLIP_MODEL_ENV}=DIR), or set OPENAI_API_KEY / OPENAI_BASE_URL "
            f"for a VLM (or {HF_VLM_ENV}=DIR), plus an index for retrieval "
            "(`trustorch index build DIR --task apple-leaf`); "
            + "; ".join(s.line() for s in self.statuses)
        )


def _one_line(text: str, limit: int = 220) -> str:
    first = " ".join(str(text).split())
    return first if len(first) <= limit else first[: limit - 1] + "…"


def discover_clip(name: str, *, device: str | None = None) -> tuple[ClipModel | None, AgentStatus]:
    """Load CLIP from local weights only; the status says what was loaded or why not."""
    from agents.clip_model import load_clip

    folder = local_weights_folder(name)
    if folder is None:
        return None, AgentStatus(
            "clip",
            f"no local weights for '{name}' (the demo never downloads; pass a folder with "
            f"--clip-model DIR or {CLIP_MODEL_ENV}=DIR)",
        )
    try:
        clip = load_clip(str(folder), device=device)
    except ModelLoadError as e:
        return None, AgentStatus("clip", _one_line(str(e)))
    # A hub id keeps its name (the index records vectors under it), not the cache path.
    if folder != Path(name).expanduser():
        clip = dataclasses.replace(clip, name=name)
    return clip, AgentStatus("clip", f"CLIP zero-shot with '{name}' on {clip.device}", "clip")


def resolve_index_dir(index_dir: Path | None, environ: Mapping[str, str]) -> Path:
    if index_dir is not None:
        return index_dir
    if environ.get(INDEX_DIR_ENV):
        return Path(environ[INDEX_DIR_ENV])
    from rag.store import default_index_dir

    return default_index_dir()


def same_model(a: str, b: str) -> bool:
    """The same hub id, or two spellings of one local folder (relative, absolute, ``~``)."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()


def discover_retrieval(
    clip: ClipModel | None, folder: Path, task: Task
) -> tuple[Any | None, AgentStatus]:
    """The index of (task, CLIP model) at ``folder`` when it exists and holds images."""
    if clip is None:
        return None, AgentStatus("retrieval", "needs CLIP weights to embed the image")
    if not (folder / "chroma.sqlite3").is_file():
        return None, AgentStatus(
            "retrieval",
            f"no index at {folder} (build one: `trustorch index build DIR --task {task.name}`, "
            "or pass --index-dir)",
        )
    from rag.store import ChromaStore

    try:
        store = ChromaStore.open(index_dir=folder)
        same = [
            i for i in store.indexes() if i.task == task.name and same_model(i.model, clip.name)
        ]
        model = same[0].model if same else clip.name
        index = store.existing(task.name, model=model)
        count = index.count()
    except StoreError as e:
        return None, AgentStatus("retrieval", _one_line(str(e)))
    if not count:
        return None, AgentStatus("retrieval", f"the index at {folder} is empty")
    return index, AgentStatus("retrieval", f"{count} labelled images at {folder}", "retrieval")


def discover_agents(
    *,
    registry: AgentRegistry,
    task: Task,
    clip_model: str | None = None,
    index_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    device: str | None = None,
) -> tuple[Availability, Any | None]:
    """Every agent the demo could use, the loaded CLIP, and the opened index (or None): CLIP
    and retrieval found here, the other kinds of ``registry`` by their own probe."""
    env = os.environ if environ is None else environ
    name = clip_model or env.get(CLIP_MODEL_ENV) or DEFAULT_CLIP_MODEL
    clip, clip_status = discover_clip(name, device=device)
    folder = resolve_index_dir(index_dir, env)
    index, retrieval_status = discover_retrieval(clip, folder, task)
    if clip is not None and index is not None and index.model != clip.name:
        clip = dataclasses.replace(clip, name=index.model)  # the index's spelling of the folder
    found = Availability(
        statuses=[clip_status, retrieval_status, *registry.probe(env)],
        clip=clip,
        index_dir=folder,
    )
    return found, index
