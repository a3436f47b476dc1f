"""The Chroma vector store: one collection per (task, embedding model), cosine space.

``ChromaStore.open`` gives an embedded ``PersistentClient`` in a folder (default: the user's
data directory) or an ``HttpClient`` for a ``chroma run`` server. Open it once per process and
pass it on. Each collection records the model and dimension of its vectors; vectors of another
model or dimension are refused with ``StoreError``. Ids are image sha256: adding an image that is
already there changes nothing. Processes that open, create or write one embedded folder at the
same time take turns on an advisory lock file in it (``core.files.FolderLock``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import ParseResult, unquote, urlparse

import numpy as np

from agents.types import Neighbour
from core.errors import InputError
from core.files import FolderLock
from core.redact import redact_url
from rag.errors import StoreError

INDEX_DIR_ENV = "TRUSTORCH_INDEX_DIR"
SCHEMA_VERSION = 1
# HNSW settings of every new collection; bench/bench_retrieval.py measures recall@10 >= 0.99
# against exact search with them at 10,000 and 100,000 clustered 512-d vectors.
DEFAULT_HNSW: dict[str, Any] = {
    "space": "cosine",
    "ef_construction": 200,
    "ef_search": 128,
    "max_neighbors": 32,
}
_PAGE = 5000
CHROMA_DB_FILE = "chroma.sqlite3"  # what an embedded Chroma folder holds once it is an index
LOCK_FILE = ".trustorch-write.lock"
CHROMA_TOKEN_ENV = "TRUSTORCH_CHROMA_TOKEN"


def chroma_auth_headers(url: ParseResult, environ: Mapping[str, str]) -> dict[str, str]:
    """What proves who we are to a Chroma server behind an authenticating proxy: a bearer token
    from ``TRUSTORCH_CHROMA_TOKEN``, else the login of the URL (``https://user:pass@host``) as
    HTTP Basic auth, else nothing."""
    token = environ.get(CHROMA_TOKEN_ENV, "").strip()
    if token:
        return {"Authorization": f"Bearer {token}"}
    if url.username is not None:
        login = f"{unquote(url.username)}:{unquote(url.password or '')}".encode()
        return {"Authorization": "Basic " + base64.b64encode(login).decode("ascii")}
    return {}


def default_index_dir() -> Path:
    """``$TRUSTORCH_INDEX_DIR`` or ``<user data dir>/trustorch/index``."""
    env = os.environ.get(INDEX_DIR_ENV)
    if env:
        return Path(env)
    from platformdirs import user_data_path

    return user_data_path("trustorch") / "index"


def _slug(text: str, limit: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].strip("-") or "x"


def collection_name(task: str, model: str) -> str:
    """A valid Chroma name (3-63 chars of [a-z0-9-], alphanumeric ends) unique per pair."""
    digest = hashlib.sha256(f"{task}\0{model}".encode()).hexdigest()[:10]
    model_tail = "-".join(Path(model.rstrip("/\\")).parts[-2:]) or model
    return f"{_slug(task, 16)}-{_slug(model_tail, 30)}-{digest}"


@dataclass(frozen=True)
class IndexInfo:
    """What ``trustorch index stats`` shows for one collection."""

    task: str
    model: str
    dim: int
    count: int
    collection: str
    location: str
    labels: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "model": self.model,
            "dim": self.dim,
            "count": self.count,
            "labels": dict(self.labels),
            "collection": self.collection,
            "location": self.location,
        }


@dataclass(frozen=True)
class StoredVectors:
    """Every item of an index with its vector (for leave-one-out evaluation)."""

    ids: list[str]
    vectors: np.ndarray
    labels: list[str]
    sources: list[str]


class ChromaStore:
    """A Chroma client (embedded folder or server) and the collections it holds."""

    def __init__(
        self, client: Any, location: str, *, folder_lock: FolderLock | None = None
    ) -> None:
        self.client = client
        self.location = location
        self.folder_lock = folder_lock

    def writing(self) -> AbstractContextManager[None]:
        """Held while an embedded folder is created or written: Chroma's migrations and the
        check-then-add of ``ImageIndex.add`` are not safe from several processes at once, so
        concurrent imports into one folder take turns (and each row is added once). A server
        serialises its own writes."""
        return self.folder_lock.held() if self.folder_lock is not None else nullcontext()

    @classmethod
    def open(
        cls,
        *,
        index_dir: str | Path | None = None,
        chroma_url: str | None = None,
        create: bool = True,
    ) -> ChromaStore:
        """A server client, or an embedded one in a folder; ``create=False`` (for reading) makes
        nothing and raises ``InputError`` when the folder holds no index."""
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False)
        if chroma_url:
            parsed = urlparse(chroma_url if "://" in chroma_url else f"http://{chroma_url}")
            if not parsed.hostname:
                raise StoreError(f"not a Chroma server URL: '{redact_url(chroma_url)}'")
            ssl = parsed.scheme == "https"
            port = parsed.port or (443 if ssl else 8000)
            try:
                client = chromadb.HttpClient(
                    host=parsed.hostname,
                    port=port,
                    ssl=ssl,
                    headers=chroma_auth_headers(parsed, os.environ),
                    settings=settings,
                )
                client.heartbeat()
            except Exception as e:
                raise StoreError(
                    f"cannot reach the Chroma server at {redact_url(chroma_url)} "
                    f"({type(e).__name__}); "
                    "is `chroma run` up?"
                ) from e
            return cls(client, f"{parsed.scheme}://{parsed.hostname}:{port}")
        folder = Path(index_dir) if index_dir else default_index_dir()
        if not create and not (folder / CHROMA_DB_FILE).is_file():
            raise InputError(f"no index at {folder}; build one with `trustorch index build`")
        lock = FolderLock(Path(os.path.realpath(folder)) / LOCK_FILE)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with lock.held():
                client = chromadb.PersistentClient(path=str(folder), settings=settings)
        except Exception as e:
            raise StoreError(f"cannot open the index folder {folder}: {e}") from e
        return cls(client, str(folder), folder_lock=lock)

    def index(self, task: str, model: str, dim: int) -> ImageIndex:
        """The index of (task, model), created empty when absent; refuses another dimension."""
        name = collection_name(task, model)
        metadata = {
            "trustorch_task": task,
            "trustorch_model": model,
            "trustorch_dim": int(dim),
            "trustorch_schema": SCHEMA_VERSION,
        }
        try:
            with self.writing():
                collection = self.client.get_or_create_collection(
                    name,
                    embedding_function=None,
                    configuration={"hnsw": dict(DEFAULT_HNSW)},
                    metadata=metadata,
                )
        except Exception as e:
            raise StoreError(f"Chroma at {self.location} refused collection {name}: {e}") from e
        index = ImageIndex(collection, self.location, writing=self.writing)
        if index.model != model or index.dim != int(dim):
            raise StoreError(
                f"collection {name} at {self.location} holds {index.dim}-d vectors of model "
                f"'{index.model}', not {int(dim)}-d vectors of '{model}'"
            )
        return index

    def existing(self, task: str, model: str | None = None) -> ImageIndex:
        """An index that must already exist; with ``model=None`` the only one for the task."""
        found = [info for info in self.indexes() if info.task == task]
        chosen = [i for i in found if i.model == model] if model is not None else found
        if len(chosen) == 1:
            collection = self.client.get_collection(chosen[0].collection)
            return ImageIndex(collection, self.location, writing=self.writing)
        present = ", ".join(f"'{i.model}' ({i.dim}-d, {i.count} images)" for i in found)
        if not chosen:
            wanted = f" and model '{model}'" if model else ""
            raise StoreError(
                f"no index for task '{task}'{wanted} at {self.location}"
                + (f"; present: {present}" if present else "; build one with `trustorch index`")
            )
        raise StoreError(
            f"several indexes for task '{task}' at {self.location} ({present}); "
            "name one with --model"
        )

    def indexes(self, *, with_labels: bool = False) -> list[IndexInfo]:
        """Every trustorch collection of this store."""
        try:
            collections = self.client.list_collections()
        except Exception as e:
            raise StoreError(f"cannot list the collections at {self.location}: {e}") from e
        out: list[IndexInfo] = []
        for collection in collections:
            if not (collection.metadata or {}).get("trustorch_model"):
                continue
            out.append(ImageIndex(collection, self.location).info(with_labels=with_labels))
        return sorted(out, key=lambda i: (i.task, i.model))


class ImageIndex:
    """One collection: labelled image vectors of one task made by one model."""

    def __init__(
        self,
        collection: Any,
        location: str,
        *,
        writing: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        self.collection = collection
        self.location = location
        self.writing = writing
        meta = collection.metadata or {}
        self.task = str(meta.get("trustorch_task", ""))
        self.model = str(meta.get("trustorch_model", ""))
        self.dim = int(meta.get("trustorch_dim", 0))

    @property
    def name(self) -> str:
        return str(self.collection.name)

    def count(self) -> int:
        return int(self.collection.count())

    def check_vectors(self, vectors: np.ndarray, model: str) -> np.ndarray:
        """The vectors as float32 [n, dim], or StoreError when model or dimension differ."""
        arr = np.asarray(vectors, dtype=np.float32)
        if model != self.model:
            raise StoreError(
                f"index '{self.name}' holds vectors of model '{self.model}'; vectors of "
                f"'{model}' are not comparable with them (build an index for that model)"
            )
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            got = arr.shape[1] if arr.ndim == 2 else arr.shape
            raise StoreError(
                f"index '{self.name}' holds {self.dim}-d vectors of '{self.model}'; got {got}-d"
            )
        return arr

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), _PAGE):
            got = self.collection.get(ids=unique[start : start + _PAGE], include=[])
            found.update(got["ids"])
        return found

    def add(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        *,
        model: str,
        labels: Sequence[str],
        sources: Sequence[str],
        split: str = "train",
    ) -> int:
        """Add the items whose id is not there yet; returns how many were added."""
        arr = self.check_vectors(vectors, model)
        if not len(ids) == len(arr) == len(labels) == len(sources):
            raise StoreError("ids, vectors, labels and sources differ in length")
        with self.writing():
            return self._add_new(ids, arr, labels=labels, sources=sources, split=split)

    def _add_new(
        self,
        ids: Sequence[str],
        arr: np.ndarray,
        *,
        labels: Sequence[str],
        sources: Sequence[str],
        split: str,
    ) -> int:
        present = self.existing_ids(ids)
        keep: list[int] = []
        seen: set[str] = set()
        for i, item_id in enumerate(ids):
            if item_id not in present and item_id not in seen:
                keep.append(i)
                seen.add(item_id)
        for start in range(0, len(keep), _PAGE):
            rows = keep[start : start + _PAGE]
            try:
                self.collection.add(
                    ids=[ids[i] for i in rows],
                    embeddings=arr[rows],
                    metadatas=[
                        {"label": labels[i], "source": sources[i], "split": split} for i in rows
                    ],
                )
            except Exception as e:
                raise StoreError(f"Chroma at {self.location} refused the insert: {e}") from e
        return len(keep)

    def query(
        self,
        vectors: np.ndarray,
        k: int,
        *,
        model: str,
        labels: Sequence[str] | None = None,
        split: str | None = None,
    ) -> list[list[Neighbour]]:
        """The k nearest items of each query vector (best first), optionally filtered; fewer
        when the index (or the filter) holds fewer than k."""
        arr = self.check_vectors(vectors, model)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if len(arr) == 0:
            return []
        clauses: list[dict[str, Any]] = []
        if labels is not None:
            clauses.append({"label": {"$in": list(labels)}})
        if split is not None:
            clauses.append({"split": split})
        where: dict[str, Any] | None = None
        if len(clauses) == 1:
            where = clauses[0]
        elif clauses:
            where = {"$and": clauses}
        try:
            got = self.collection.query(
                query_embeddings=arr,
                n_results=int(k),
                where=where,
                include=["distances", "metadatas"],
            )
        except Exception as e:
            raise StoreError(f"Chroma at {self.location} refused the query: {e}") from e
        return [
            [
                Neighbour(
                    id=item_id,
                    label=str(meta["label"]),
                    similarity=1.0 - float(dist),
                    source=meta.get("source"),
                )
                for item_id, dist, meta in zip(ids, dists, metas, strict=True)
            ]
            for ids, dists, metas in zip(
                got["ids"], got["distances"], got["metadatas"], strict=True
            )
        ]

    def _pages(self, include: list[str]) -> Iterator[Mapping[str, Any]]:
        offset = 0
        while True:
            page = self.collection.get(include=include, limit=_PAGE, offset=offset)
            if not page["ids"]:
                return
            yield page
            offset += len(page["ids"])

    def label_counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for page in self._pages(["metadatas"]):
            counts.update(str(m["label"]) for m in page["metadatas"])
        return dict(sorted(counts.items()))

    def all_vectors(self) -> StoredVectors:
        ids: list[str] = []
        chunks: list[np.ndarray] = []
        labels: list[str] = []
        sources: list[str] = []
        for page in self._pages(["embeddings", "metadatas"]):
            ids.extend(page["ids"])
            chunks.append(np.asarray(page["embeddings"], dtype=np.float32))
            labels.extend(str(m["label"]) for m in page["metadatas"])
            sources.extend(str(m.get("source", "")) for m in page["metadatas"])
        vectors = np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)
        return StoredVectors(ids=ids, vectors=vectors, labels=labels, sources=sources)

    def info(self, *, with_labels: bool = True) -> IndexInfo:
        return IndexInfo(
            task=self.task,
            model=self.model,
            dim=self.dim,
            count=self.count(),
            collection=self.name,
            location=self.location,
            labels=self.label_counts() if with_labels else {},
        )
