"""Checkpoint cost: ms per image of ``run_batch`` with agents that answer at once.

Measured in one run, each variant over the same images, in turn, ``--repeats`` times (medians):
- product_disk / product_tmpfs: ``run_batch`` over the graph with the product's checkpointer
  (``orchestrator.checkpoint.open_checkpointer``), checkpoint and output on disk (next to this
  checkout) or on tmpfs (/dev/shm);
- graph_no_checkpoint: ``run_batch`` over the same graph without a checkpointer (output on disk);
- direct: the same agents and policy called by a plain async function (bench_graph.direct);
- bare_langgraph_sqlite: a minimal LangGraph graph of the same shape (two agent tasks fanned out,
  assess, finalize) on LangGraph's ``AsyncSqliteSaver`` as it comes, ``durability="sync"``, on disk;
- bare_langgraph_no_checkpoint: that graph without a checkpointer (LangGraph's own floor);
- product_postgres (``--postgres URL``, or ``--postgres local`` to start a server of Debian's
  ``postgresql`` for the run, durable settings): ``run_batch`` with the Postgres checkpointer.

Overheads are reported over ``direct``, checkpointing over ``graph_no_checkpoint``, and Postgres
over SQLite on disk; wall and CPU time (this process's, threads included) per image.

Usage:
  python bench/bench_checkpoint.py                       # writes bench/results/checkpoint.json
  python bench/bench_checkpoint.py --images 200 -j 1 --postgres local --json-out /tmp/c.json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import operator
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any, TypedDict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_graph import direct  # noqa: E402

from agents.types import Prediction  # noqa: E402
from core.images import ImageRef, LabelledImage  # noqa: E402
from core.task import Task, load_task  # noqa: E402
from orchestrator.checkpoint import open_checkpointer  # noqa: E402
from orchestrator.graph import build_graph  # noqa: E402
from orchestrator.policies import make_policy  # noqa: E402
from orchestrator.runner import run_batch  # noqa: E402


class InstantAgent:
    """Answers at once, from the image's sha256 (no file is read)."""

    can_reevaluate = True

    def __init__(self, name: str) -> None:
        self.name = name

    async def predict(self, image: Any, task: Task, *, round: int = 0, **_: Any) -> Prediction:
        sha = image.sha256 if isinstance(image, ImageRef) else image.ref.sha256
        label = task.labels[int(sha[:2], 16) % len(task.labels)]
        return Prediction(agent=self.name, label=label, confidence=0.9, round=round)


def make_images(n: int, seed: int) -> list[LabelledImage]:
    return [
        LabelledImage(
            ImageRef(
                source=f"img_{i}.png",
                sha256=hashlib.sha256(f"bench-checkpoint:{seed}:{i}".encode()).hexdigest(),
            )
        )
        for i in range(n)
    ]


Variant = Callable[[list[LabelledImage], Path], Awaitable[None]]


def product(task: Task, where: Callable[[Path], str | Path] | None, concurrency: int) -> Variant:
    async def run(images: list[LabelledImage], folder: Path) -> None:
        opened = open_checkpointer(where(folder)) if where is not None else nullcontext()
        async with opened as saver:
            graph = build_graph(
                task=task,
                agents=[InstantAgent("a"), InstantAgent("b")],
                policy=make_policy("majority"),
                checkpointer=saver,
            )
            await run_batch(
                graph, images, task=task, out=folder / "out.jsonl", concurrency=concurrency
            )

    return run


def direct_calls(task: Task, concurrency: int) -> Variant:
    agents = [InstantAgent("a"), InstantAgent("b")]
    policy = make_policy("majority")

    async def run(images: list[LabelledImage], folder: Path) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(item: LabelledImage) -> None:
            async with gate:
                await direct(item.image, task, agents, None, policy, 2)

        await asyncio.gather(*(one(item) for item in images))

    return run


class BareState(TypedDict):
    sha: str
    answers: Annotated[list[str], operator.add]
    label: str


def bare_langgraph(concurrency: int, *, checkpoint: bool = True) -> Variant:
    """LangGraph (and its SQLite saver) as they come: the same shape as the product's graph."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send

    async def agent(call: dict[str, str]) -> dict[str, Any]:
        return {"answers": [call["name"] + call["sha"][:2]]}

    async def assess(state: BareState) -> dict[str, Any]:
        return {}

    async def finalize(state: BareState) -> dict[str, Any]:
        return {"label": max(state["answers"])}

    builder = StateGraph(BareState)
    builder.add_node("agent", agent)
    builder.add_node("assess", assess)
    builder.add_node("finalize", finalize)
    builder.add_conditional_edges(
        START, lambda s: [Send("agent", {"name": n, "sha": s["sha"]}) for n in "ab"], ["agent"]
    )
    builder.add_edge("agent", "assess")
    builder.add_edge("assess", "finalize")
    builder.add_edge("finalize", END)

    async def run(images: list[LabelledImage], folder: Path) -> None:
        opened = (
            AsyncSqliteSaver.from_conn_string(str(folder / "bare.sqlite"))
            if checkpoint
            else nullcontext()
        )
        async with opened as saver:
            graph = builder.compile(checkpointer=saver)
            gate = asyncio.Semaphore(concurrency)

            async def one(item: LabelledImage) -> None:
                async with gate:
                    config = {"configurable": {"thread_id": item.image.sha256}}
                    durability = "sync" if checkpoint else None
                    await graph.ainvoke({"sha": item.image.sha256}, config, durability=durability)

            await asyncio.gather(*(one(item) for item in images))

    return run


async def timed(variant: Variant, images: list[LabelledImage], base: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, its threads included) of one variant."""
    folder = Path(tempfile.mkdtemp(dir=base))
    try:
        start, cpu = time.perf_counter(), time.process_time()
        await variant(images, folder)
        return time.perf_counter() - start, time.process_time() - cpu
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def postgres_database(spec: str | None, stack: Any) -> str | None:
    """The URL to bench Postgres on: ``spec`` itself, or a fresh local server's (``local``)."""
    if spec is None:
        return None
    if spec != "local":
        return spec
    sys.path.insert(0, str(ROOT / "tests"))
    from postgres_server import postgres_server

    server = stack.enter_context(postgres_server(durable=True))
    return server.create_database("bench")


async def measure(args: argparse.Namespace, postgres_url: str | None) -> dict[str, Any]:
    task = load_task("apple-leaf")
    disk = ROOT / "bench/results/tmp"
    disk.mkdir(parents=True, exist_ok=True)
    tmpfs = Path("/dev/shm") if Path("/dev/shm").is_dir() else disk
    j = args.concurrency
    variants: dict[str, tuple[Variant, Path]] = {
        "product_disk": (product(task, lambda f: f / "out.ckpt.sqlite", j), disk),
        "product_tmpfs": (product(task, lambda f: f / "out.ckpt.sqlite", j), tmpfs),
        "graph_no_checkpoint": (product(task, None, j), disk),
        "direct": (direct_calls(task, j), disk),
        "bare_langgraph_sqlite": (bare_langgraph(j), disk),
        "bare_langgraph_no_checkpoint": (bare_langgraph(j, checkpoint=False), disk),
    }
    if postgres_url is not None:
        variants["product_postgres"] = (product(task, lambda f: postgres_url, j), disk)
    warm = make_images(8, seed=-1)
    for variant, base in variants.values():
        await timed(variant, warm, base)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(args.repeats):  # in turn, so that a busy moment hits every variant alike
        images = make_images(args.images, seed=repeat)  # new threads (Postgres keeps old ones)
        for name, (variant, base) in variants.items():
            wall_s, cpu_s = await timed(variant, images, base)
            samples[name].append(1000 * wall_s / args.images)
            cpu[name].append(1000 * cpu_s / args.images)
    shutil.rmtree(disk, ignore_errors=True)
    ms = {name: statistics.median(s) for name, s in samples.items()}
    out: dict[str, Any] = {
        "images": args.images,
        "concurrency": j,
        "repeats": args.repeats,
        "ms_per_image": ms,
        "cpu_ms_per_image": {name: statistics.median(s) for name, s in cpu.items()},
        "samples_ms_per_image": samples,
        "overhead_over_direct_ms": {n: v - ms["direct"] for n, v in ms.items() if n != "direct"},
        "ratio_over_direct": {n: v / ms["direct"] for n, v in ms.items() if n != "direct"},
        "checkpoint_over_graph_ms": {
            n: ms[n] - ms["graph_no_checkpoint"] for n in ms if n.startswith("product_")
        },
        "target_overhead_ms": 5.0,
    }
    if "product_postgres" in ms:
        out["postgres_over_sqlite_disk_ms"] = ms["product_postgres"] - ms["product_disk"]
    return out


def main() -> None:
    from contextlib import ExitStack

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--concurrency", "-j", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--postgres", help="a postgresql:// URL, or 'local' to start a server")
    parser.add_argument("--json-out", type=Path, default=ROOT / "bench/results/checkpoint.json")
    args = parser.parse_args()
    with ExitStack() as stack:
        result = asyncio.run(measure(args, postgres_database(args.postgres, stack)))
    direct_ms = result["ms_per_image"]["direct"]
    for name, value in result["ms_per_image"].items():
        extra = "" if name == "direct" else f" (+{value - direct_ms:.2f} over direct)"
        cpu_ms = result["cpu_ms_per_image"][name]
        print(f"{name}: {value:.2f} ms/image{extra}, CPU {cpu_ms:.2f} ms/image")
    for name, value in result["checkpoint_over_graph_ms"].items():
        print(f"{name}: checkpointing costs {value:+.2f} ms/image over the graph without one")
    if "postgres_over_sqlite_disk_ms" in result:
        extra_ms = result["postgres_over_sqlite_disk_ms"]
        print(f"postgres over sqlite on disk: {extra_ms:+.2f} ms/image")
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
