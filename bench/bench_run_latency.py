"""Latency-bound throughput: ``trustorch run`` with two OpenAI-compatible agents whose server
answers every call after a fixed delay, against a bare async client in the same run.

A loopback server (``bench/latency_server.py``, a process of its own) answers each completion
after ``--latency-ms`` (200) and counts the most requests it had in flight. For each ``-j``:

- the product: ``trustorch run DIR -a a=openai:m -a b=openai:m -j J --json`` in a fresh
  interpreter, as a user runs it (this checkout's code), over ``--images`` small distinct PNGs;
  no trust profile, so every image takes two rounds (four calls). Its images/s is over the
  run's own wall time (the ``wall_s`` of its summary: start-up and model-free imports left
  out; the end-to-end figure is given too). CPU seconds per image is the process's CPU (user +
  system) beyond that of the same command on ``--startup-images`` images, per extra image;
  peak RSS is the process's own (``wait4``);
- the bare baseline: one ``openai.AsyncOpenAI`` per agent in this process, J images in flight,
  each image two rounds of both agents' calls at once (the same request: prompt, data URL,
  JSON schema), and the same client capped at 4 calls per agent (the old per-agent default).

The ideal images/s is min(J x agents / (latency x calls per image), 1 / CPU s per image): the
calls the run may have in flight, or what one core does at the measured CPU cost per image.
Efficiency is the measured rate over it. Each figure is the median of ``--repeats`` runs, taken
in turn so a busy moment hits every variant alike.

Usage:
  python bench/bench_run_latency.py                         # writes bench/results/run_latency.json
  python bench/bench_run_latency.py --quick --json-out /tmp/run_latency.json
  python bench/bench_run_latency.py --jobs 64 --images 400 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from orchestrator.cli import entry; entry()"]
AGENTS = ("a", "b")
ROUNDS = 2
OLD_CAP = 4


def make_images(folder: Path, n: int) -> Path:
    """``n`` distinct 24 x 24 PNGs (no two share a sha256: a run drops duplicates)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        colour = (i % 251, (i // 251) % 251, (7 * i) % 253)
        Image.new("RGB", (24, 24), colour).save(folder / f"leaf{i:05d}.png")
    return folder


class Server:
    """The latency server in a process of its own."""

    def __init__(self, latency_s: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench/latency_server.py"), "--delay-s", str(latency_s)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def _call(self, method: str, path: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}{path}"
        req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=10) as reply:
            return json.loads(reply.read())

    def reset(self) -> None:
        self._call("POST", "/reset")

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def run_cli(folder: Path, out: Path, jobs: int, base_url: str) -> dict[str, Any]:
    """``trustorch run`` in a fresh interpreter: wall and CPU seconds, peak RSS, its summary."""
    cmd = [
        *CLI,
        "run",
        str(folder),
        *(arg for name in AGENTS for arg in ("-a", f"{name}=openai:bench-model")),
        "--out",
        str(out),
        "-j",
        str(jobs),
        "--json",
    ]
    env = {**os.environ, "OPENAI_BASE_URL": base_url, "PYTHONPATH": str(ROOT)}
    env.pop("OPENAI_API_KEY", None)
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"trustorch run exited {proc.returncode}: {stdout[-500:]}")
    summary = json.loads(stdout)
    return {
        "wall_s": wall,
        "run_wall_s": float(summary["wall_s"]),
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "decided": int(summary["decided"]),
        "agent_failures": int(summary.get("agent_failures") or 0),
    }


def product(
    server: Server,
    folder: Path,
    jobs: int,
    workdir: Path,
    startup: dict[str, Any],
    startup_images: int,
    k: int,
) -> dict[str, Any]:
    """One ``trustorch run`` at ``-j jobs``; CPU per image is the marginal one: what it took
    beyond the ``startup`` run of ``startup_images`` images, per image more."""
    n = sum(1 for _ in folder.iterdir())
    server.reset()
    out = workdir / f"run-j{jobs}-{k}.jsonl"
    got = run_cli(folder, out, jobs, server.base_url)
    stats = server.stats()
    if got["decided"] != n or got["agent_failures"]:
        raise RuntimeError(f"-j {jobs}: decided {got['decided']} of {n}, {got}")
    return {
        "images_per_s": n / got["run_wall_s"],
        "end_to_end_images_per_s": n / got["wall_s"],
        "cpu_s_per_image": max(got["cpu_s"] - startup["cpu_s"], 0.0) / (n - startup_images),
        "peak_rss_mb": got["peak_rss_mb"],
        "max_in_flight": stats["max_in_flight"],
        "calls_per_image": stats["requests"] / n,
    }


def request_messages(png: bytes) -> list[dict[str, Any]]:
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    text = "Classify this apple leaf as black-rot, healthy, rust or scab; answer in JSON."
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": url, "detail": "auto"}},
            ],
        }
    ]


SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "label": {"type": "string"},
                "confidence": {"type": "number"},
                "reason": {"type": "string"},
            },
            "required": ["label", "confidence", "reason"],
            "additionalProperties": False,
        },
    },
}


async def bare_async(
    base_url: str, pngs: list[bytes], jobs: int, cap: int | None
) -> tuple[float, int]:
    """(seconds, answers) of a bare client: ``jobs`` images in flight, two rounds of both
    agents' calls per image; ``cap``: at most that many calls per agent at once."""
    from openai import AsyncOpenAI

    clients = [AsyncOpenAI(api_key="none", base_url=base_url, max_retries=0) for _ in AGENTS]
    caps = [asyncio.Semaphore(cap) if cap else None for _ in AGENTS]
    gate = asyncio.Semaphore(jobs)
    answers = 0

    async def call(i: int, png: bytes) -> None:
        nonlocal answers

        async def send() -> None:
            nonlocal answers
            reply = await clients[i].chat.completions.create(
                model="bench-model",
                messages=request_messages(png),  # type: ignore[arg-type]
                response_format=SCHEMA,  # type: ignore[arg-type]
                max_tokens=400,
                temperature=0.0,
            )
            json.loads(reply.choices[0].message.content or "{}")
            answers += 1

        if caps[i] is None:
            await send()
        else:
            async with caps[i]:
                await send()

    async def image(png: bytes) -> None:
        async with gate:
            for _ in range(ROUNDS):
                await asyncio.gather(*(call(i, png) for i in range(len(AGENTS))))

    start = time.perf_counter()
    try:
        await asyncio.gather(*(image(png) for png in pngs))
    finally:
        for c in clients:
            await c.close()
    return time.perf_counter() - start, answers


def bare(server: Server, pngs: list[bytes], jobs: int, cap: int | None) -> dict[str, Any]:
    server.reset()
    cpu = time.process_time()
    seconds, answers = asyncio.run(bare_async(server.base_url, pngs, jobs, cap))
    cpu = time.process_time() - cpu
    stats = server.stats()
    if answers != len(pngs) * ROUNDS * len(AGENTS):
        raise RuntimeError(f"bare client: {answers} answers")
    return {
        "images_per_s": len(pngs) / seconds,
        "cpu_s_per_image": cpu / len(pngs),
        "max_in_flight": stats["max_in_flight"],
        "calls_per_image": stats["requests"] / len(pngs),
    }


def ideal(jobs: int, latency_s: float, calls_per_image: float, cpu_s_per_image: float) -> float:
    """Images/s the in-flight calls allow, bounded by one core at the measured CPU cost."""
    in_flight = jobs * len(AGENTS)
    by_latency = in_flight / (latency_s * calls_per_image) if calls_per_image else float("inf")
    by_cpu = 1.0 / cpu_s_per_image if cpu_s_per_image > 0 else float("inf")
    return min(by_latency, by_cpu)


def medians(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    latency_s = args.latency_ms / 1000
    with tempfile.TemporaryDirectory(prefix="bench-run-latency-") as tmp:
        workdir = Path(tmp)
        folder = make_images(workdir / "images", args.images)
        small = make_images(workdir / "startup", args.startup_images)
        pngs = sorted(p.read_bytes() for p in folder.iterdir())
        server = Server(latency_s)
        try:
            run_cli(small, workdir / "warm.jsonl", 1, server.base_url)  # compiled files, caches
            samples: dict[int, dict[str, list[dict[str, Any]]]] = {
                j: {"product": [], "bare": [], "bare_capped": []} for j in args.jobs
            }
            for k in range(args.repeats):
                startup = run_cli(small, workdir / f"startup-{k}.jsonl", 1, server.base_url)
                for j in args.jobs:
                    samples[j]["product"].append(
                        product(server, folder, j, workdir, startup, args.startup_images, k)
                    )
                    samples[j]["bare"].append(bare(server, pngs, j, None))
                    samples[j]["bare_capped"].append(bare(server, pngs, j, OLD_CAP))
        finally:
            server.stop()
    out: dict[str, Any] = {
        "images": args.images,
        "latency_ms": args.latency_ms,
        "agents": len(AGENTS),
        "repeats": args.repeats,
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "jobs": {},
    }
    for j in args.jobs:
        row = {name: medians(found) for name, found in samples[j].items()}
        p = row["product"]
        p["ideal_images_per_s"] = ideal(j, latency_s, p["calls_per_image"], p["cpu_s_per_image"])
        p["latency_bound_images_per_s"] = ideal(j, latency_s, p["calls_per_image"], 0.0)
        p["efficiency"] = p["images_per_s"] / p["ideal_images_per_s"]
        p["over_bare"] = p["images_per_s"] / row["bare"]["images_per_s"]
        out["jobs"][str(j)] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--startup-images", type=int, default=2)
    parser.add_argument("--jobs", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="80 images, one repeat")
    parser.add_argument("--json-out", type=Path, default=ROOT / "bench/results/run_latency.json")
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats = min(args.images, 80), 1
    args.jobs = args.jobs or [1, 8, 32, 64]
    result = measure(args)
    print(
        f"{args.images} images, 2 agents, {args.latency_ms:g} ms per call, "
        f"medians of {args.repeats}"
    )
    for j, row in result["jobs"].items():
        p, b, c = row["product"], row["bare"], row["bare_capped"]
        print(
            f"-j {j:>3}: trustorch run {p['images_per_s']:6.1f} img/s "
            f"(end to end {p['end_to_end_images_per_s']:.1f}), efficiency {p['efficiency']:.2f} "
            f"of ideal {p['ideal_images_per_s']:.1f}, {p['max_in_flight']} in flight, "
            f"{p['calls_per_image']:.2f} calls/img, {p['cpu_s_per_image'] * 1000:.1f} ms CPU/img, "
            f"peak RSS {p['peak_rss_mb']:.0f} MB | bare client {b['images_per_s']:.1f} img/s "
            f"({b['max_in_flight']} in flight, {b['cpu_s_per_image'] * 1000:.1f} ms CPU/img), "
            f"capped at {OLD_CAP}/agent {c['images_per_s']:.1f} img/s"
        )
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
