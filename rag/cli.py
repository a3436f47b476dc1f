"""``trustorch index``: build, import and inspect the image retrieval index."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from core.cli import JsonOption, TaskOption, device_name, emit_json, print_table, stderr_console

if TYPE_CHECKING:
    from rag.store import ChromaStore

app = typer.Typer(
    help="The image retrieval index (CLIP embeddings in Chroma).", no_args_is_help=True
)

IndexDirOption = Annotated[
    Path | None,
    typer.Option(
        "--index-dir",
        help="Folder of the embedded Chroma index (default: $TRUSTORCH_INDEX_DIR or the user "
        "data directory).",
    ),
]
ChromaUrlOption = Annotated[
    str | None,
    typer.Option(
        "--chroma-url", help="A Chroma server (`chroma run`) URL, e.g. http://127.0.0.1:8000."
    ),
]
SplitOption = Annotated[str, typer.Option("--split", help="Split recorded with each item.")]


def open_store(
    index_dir: Path | None, chroma_url: str | None, *, create: bool = True
) -> ChromaStore:
    """The store; ``create=False`` for read-only commands (a missing folder is an InputError)."""
    from rag.store import ChromaStore

    return ChromaStore.open(index_dir=index_dir, chroma_url=chroma_url, create=create)


def _print_report(title: str, report_dict: dict, location: str) -> None:
    rows = [
        ("seen", report_dict["seen"]),
        ("added", report_dict["added"]),
        ("already indexed", report_dict["already_indexed"]),
        ("duplicates in source", report_dict["duplicates"]),
        ("failed", len(report_dict["failed"])),
        ("total in index", report_dict["total_in_index"]),
        ("wall s", report_dict["wall_s"]),
    ]
    typer.echo(f"{title} at {location}")
    print_table("", ["", "value"], rows)
    typer.echo(f"ids: {report_dict['id_scheme']}")
    if report_dict["failed"]:
        typer.echo("skipped (unreadable):")
        for failure in report_dict["failed"]:
            typer.echo(f"  {failure['source']}: {failure['reason']}")


@app.command("build")
def build(
    source: Annotated[
        Path, typer.Argument(help="ImageFolder (DIR/<label>/*) or CSV manifest (path,label).")
    ],
    task: TaskOption = "apple-leaf",
    clip_model: Annotated[
        str | None,
        typer.Option("--clip-model", help="CLIP hub id or folder (default $TRUSTORCH_CLIP_MODEL)."),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="auto, cpu, cuda, cuda:1 ...", callback=device_name)
    ] = "auto",
    index_dir: IndexDirOption = None,
    chroma_url: ChromaUrlOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    split: SplitOption = "train",
    limit: Annotated[
        int | None, typer.Option("--limit", min=0, help="Add at most this many new images.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Embed labelled images with CLIP and add the new ones to the index (resumable).

    Examples:
      trustorch index build data/train --task apple-leaf
      trustorch index build manifest.csv --clip-model ./clip-vit-b32 --batch-size 64
      trustorch index build data/train --chroma-url http://127.0.0.1:8000 --json
    """
    from agents.clip_model import load_clip
    from core.task import load_task
    from rag.embedder import ImageEmbedder
    from rag.index import index_entries, scan_source

    the_task = load_task(task)
    scanned = scan_source(source, the_task)
    store = open_store(index_dir, chroma_url)
    clip = load_clip(clip_model, device=device)
    embedder = ImageEmbedder(clip, batch_size=batch_size)
    index = store.index(the_task.name, embedder.model, embedder.dim)
    report = index_entries(scanned, the_task, embedder, index, split=split, limit=limit)
    result = report.to_dict() | {"collection": index.name, "location": store.location}
    if json_out:
        emit_json(result)
        return
    _print_report(f"index build {index.name}", result, store.location)


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help=".npz with embeddings [n, d], labels [n], image.")],
    model: Annotated[str, typer.Option("--model", help="Name of the model that made the vectors.")],
    task: TaskOption = "apple-leaf",
    index_dir: IndexDirOption = None,
    chroma_url: ChromaUrlOption = None,
    split: SplitOption = "train",
    json_out: JsonOption = False,
) -> None:
    """Import precomputed embeddings (read with allow_pickle=False).

    Examples:
      trustorch index import train_clip_vitb32_embeddings.npz \\
          --model openai/clip-vit-base-patch32 --task apple-leaf
      trustorch index import vectors.npz --model my-clip --index-dir ./index --json
    """
    from core.task import load_task
    from rag.index import import_embeddings
    from rag.npz import read_embeddings_npz

    the_task = load_task(task)
    data = read_embeddings_npz(file, the_task)
    store = open_store(index_dir, chroma_url)
    index = store.index(the_task.name, model, int(data.vectors.shape[1]))
    report = import_embeddings(data, index, model=model, split=split)
    result = report.to_dict() | {"collection": index.name, "location": store.location}
    if json_out:
        emit_json(result)
        return
    _print_report(f"index import {index.name}", result, store.location)


@app.command("stats")
def stats(
    task: Annotated[str | None, typer.Option("--task", help="Only this task's indexes.")] = None,
    index_dir: IndexDirOption = None,
    chroma_url: ChromaUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Count per label, model, dimension and location of every index.

    Examples:
      trustorch index stats
      trustorch index stats --task apple-leaf --json
      trustorch index stats --chroma-url http://127.0.0.1:8000
    """
    store = open_store(index_dir, chroma_url, create=False)
    infos = [i for i in store.indexes(with_labels=True) if task is None or i.task == task]
    if json_out:
        emit_json({"location": store.location, "indexes": [i.to_dict() for i in infos]})
        return
    if not infos:
        stderr_console().print(f"no index at {store.location}")
        return
    for info in infos:
        rows = [(label, count) for label, count in info.labels.items()]
        rows.append(("total", info.count))
        typer.echo(f"task {info.task} · model {info.model} · {info.dim}-d")
        typer.echo(f"collection {info.collection} at {info.location}")
        print_table("", ["label", "images"], rows)
