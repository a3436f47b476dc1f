"""Graph benchmark: LangGraph overhead per image, and replay throughput.

Measured in one run, each against its baseline:
- overhead: the compiled graph vs the same agents, retriever and policy called directly by a
  plain async function that follows the same route (first looks in parallel, assess, retrieve,
  assess, re-evaluate, assess). One image at a time (latency per image) and 64 at a time
  (throughput). With the replay agents the agents cost ~nothing, so this is the graph's own
  cost; ``--agent-latency-ms`` adds a sleep to every agent call to see it beside a model's.
- replay throughput in images/s on the study's 160 recorded images and on 10,000 images
  resampled from them (new identities, recorded answers found by file name).

The trust policy is fitted once on all 160 rows (a throughput benchmark, not an accuracy one:
the accuracy figures come from ``trustorch eval replay``, fitted on training folds only).

Usage:
  python bench/bench_graph.py                       # writes bench/results/graph.json
  python bench/bench_graph.py --resampled 2000 --agent-latency-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.types import Prediction  # noqa: E402
from core.images import ImageRef  # noqa: E402
from core.task import Task, load_task  # noqa: E402
from eval.recorded.records import read_records  # noqa: E402
from orchestrator.graph import build_graph, classify  # noqa: E402
from orchestrator.policies.trust import TrustPolicy  # noqa: E402
from orchestrator.replay.agent import ReplayAgent, recorded_images  # noqa: E402
from orchestrator.replay.retriever import RecordedRetriever  # noqa: E402
from orchestrator.replay.run import replay_columns  # noqa: E402

CASE3 = ROOT.parent / "shared/data/paper/case3_trust_rag.csv"


class SlowAgent:
    """A replay agent that sleeps ``delay_s`` per call (a stand-in for a model's latency)."""

    def __init__(self, inner: ReplayAgent, delay_s: float) -> None:
        self.inner = inner
        self.name = inner.name
        self.can_reevaluate = inner.can_reevaluate
        self.delay_s = delay_s

    async def predict(self, image: ImageRef, task: Task, **kwargs: Any) -> Prediction:
        await asyncio.sleep(self.delay_s)
        return await self.inner.predict(image, task, **kwargs)


async def direct(image: ImageRef, task: Task, agents, retriever, policy, max_rounds: int):
    """The graph's route, by hand: the baseline the graph's overhead is measured against."""
    by_name = {a.name: a for a in agents}
    preds = list(await asyncio.gather(*(a.predict(image, task, round=0) for a in agents)))
    evidence = None
    round_ = 0
    assessment = await policy.assess(
        task=task, predictions=preds, evidence=None, round=0, max_rounds=max_rounds
    )
    while not assessment.trusted and round_ < max_rounds - 1:
        if evidence is None and retriever is not None:
            evidence = await retriever.retrieve(image, task)
            assessment = await policy.assess(
                task=task, predictions=preds, evidence=evidence, round=round_, max_rounds=max_rounds
            )
            if assessment.trusted:
                break
        names = [n for n in assessment.reevaluate if by_name[n].can_reevaluate]
        if not names:
            break
        round_ += 1
        latest = {p.agent: p for p in preds}
        preds += await asyncio.gather(
            *(
                by_name[n].predict(
                    image, task, round=round_, previous=latest.get(n), evidence=evidence
                )
                for n in names
            )
        )
        assessment = await policy.assess(
            task=task, predictions=preds, evidence=evidence, round=round_, max_rounds=max_rounds
        )
    return assessment


async def timed(make_call, images: Sequence[ImageRef], concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one(image: ImageRef) -> None:
        async with gate:
            await make_call(image)

    start = time.perf_counter()
    await asyncio.gather(*(one(im) for im in images))
    return time.perf_counter() - start


def resample(images: Sequence[ImageRef], n: int, seed: int) -> list[ImageRef]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        src = rng.choice(images)
        sha = hashlib.sha256(f"resampled:{i}:{src.sha256}".encode()).hexdigest()
        out.append(ImageRef(source=src.source, sha256=sha))
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    task = load_task("apple-leaf")
    records = read_records(args.file, task=task)
    columns, retrieval = replay_columns(records)
    images = [li.image for li in recorded_images(args.file, records=records)]
    policy = TrustPolicy(retrieval_source=retrieval, seed=0).fit(records, columns)
    base_agents = [ReplayAgent.from_records(records, c.agent) for c in columns]
    agents: list[Any] = (
        [SlowAgent(a, args.agent_latency_ms / 1000) for a in base_agents]
        if args.agent_latency_ms
        else base_agents
    )
    retriever = RecordedRetriever.from_records(records, source=retrieval) if retrieval else None
    graph = build_graph(
        task=task, agents=agents, policy=policy, retriever=retriever, max_rounds=args.max_rounds
    )

    async def via_graph(image: ImageRef) -> None:
        await classify(graph, image)

    async def via_direct(image: ImageRef) -> None:
        await direct(image, task, agents, retriever, policy, args.max_rounds)

    await timed(via_graph, images[:8], 8)  # warm-up
    out: dict[str, Any] = {
        "file": str(args.file),
        "agent_latency_ms": args.agent_latency_ms,
        "max_rounds": args.max_rounds,
    }
    for label, concurrency in (("sequential", 1), ("concurrent", args.concurrency)):
        t_graph = min([await timed(via_graph, images, concurrency) for _ in range(args.repeats)])
        t_direct = min([await timed(via_direct, images, concurrency) for _ in range(args.repeats)])
        n = len(images)
        out[f"overhead_{label}"] = {
            "concurrency": concurrency,
            "images": n,
            "graph_ms_per_image": 1000 * t_graph / n,
            "direct_ms_per_image": 1000 * t_direct / n,
            "graph_overhead_ms_per_image": 1000 * (t_graph - t_direct) / n,
            "ratio_graph_over_direct": t_graph / t_direct,
        }
    for label, batch in (
        ("recorded_160", images),
        (f"resampled_{args.resampled}", resample(images, args.resampled, seed=0)),
    ):
        t_graph = await timed(via_graph, batch, args.concurrency)
        t_direct = await timed(via_direct, batch, args.concurrency)
        out[f"throughput_{label}"] = {
            "images": len(batch),
            "concurrency": args.concurrency,
            "graph_images_per_s": len(batch) / t_graph,
            "direct_images_per_s": len(batch) / t_direct,
            "ratio_graph_over_direct": t_graph / t_direct,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=CASE3)
    parser.add_argument("--resampled", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-rounds", type=int, default=2)
    parser.add_argument("--agent-latency-ms", type=float, default=0.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/graph.json")
    args = parser.parse_args()
    if not args.file.is_file():
        sys.exit(f"recorded file not found: {args.file}")
    result = asyncio.run(main_async(args))
    for key, value in result.items():
        if isinstance(value, dict):
            print(
                key
                + ": "
                + ", ".join(
                    f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items()
                )
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
