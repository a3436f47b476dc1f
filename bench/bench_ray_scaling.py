"""Throughput of ``trustorch run --engine ray`` with 1, 2 and 4 workers against the local
engine, on a latency-bound agent and on an agent that answers at once.

Cases:
- ``latency``: one OpenAI-compatible agent on a loopback server (tests/openai_server.py) that
  answers every call after ``--latency-s`` (200 ms); default trust profiles are not trusted, so
  every image takes two calls one after the other. Ideal images/s = workers x ``-j`` /
  (2 x latency); efficiency = measured / ideal.
- ``instant``: two FAKE scripted agents (tests/test_run_cli.py, through ``py:``) that answer at
  once: the per-image cost of the graph, the checkpoint and, for Ray, the shards.

Every Ray run joins one cluster that this script starts (``ray start --head``, its process group
killed at the end), so the cluster's start-up is not counted; the actors' start-up (building the
agents) is. Images/s is images / the run's own ``wall_s`` (its --json summary); the command's
wall time is reported too. The per-image overhead of Ray is (ray wall - local wall) / images at
the same ``-j`` per process. For Ray, images/s counts from the moment every actor has built its
agents (``shards_s`` of the summary) to the last shard, like the local engine's ``wall_s``,
which starts once its agents are built; ``run_wall_s`` (Ray's start-up and the actors' builds
included) and the command's wall are reported beside it.

Usage:
  python bench/bench_ray_scaling.py --quick --json-out /tmp/ray_scaling.json
  python bench/bench_ray_scaling.py --images 200 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from openai_server import chat_reply, openai_server  # noqa: E402
from test_run_cli import agent_spec  # noqa: E402

REPLY = '{"label": "rust", "confidence": 0.8, "reason": "orange spots"}'


def make_images(root: Path, n: int) -> Path:
    from PIL import Image

    (root / "rust").mkdir(parents=True, exist_ok=True)  # the scripted agents answer "rust"
    for i in range(n):
        img = Image.new("RGB", (16, 16), (i % 256, (i // 256) % 256, 7))
        img.save(root / "rust" / f"img_{i:05d}.png")
    return root


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_AUTH_MODE": "token",
        "OPENAI_API_KEY": "sk-bench",
    }


def start_cluster(cpus: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    log = Path(temp) / "head.log"
    ray_bin = str(Path(sys.executable).with_name("ray"))
    with log.open("wb") as sink:
        head = subprocess.Popen(
            [ray_bin, "start", "--head", "--port", str(port), "--include-dashboard", "false",
             "--temp-dir", temp, "--num-cpus", str(cpus), "--block", "--disable-usage-stats"],
            env=env(), start_new_session=True, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (m := re.search(r"ray start --address='([^']+)'", log.read_text())):
        if head.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("ray start --head failed: " + log.read_text()[-800:])
        time.sleep(0.5)
    return head, m.group(1)


def stop_cluster(head: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(head.pid, sig)
            head.wait(timeout=30)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def one_run(agents: list[str], data: Path, work: Path, extra: list[str]) -> dict[str, Any]:
    out = work / f"out-{time.monotonic_ns()}.jsonl"
    cmd = [sys.executable, "-c", "from orchestrator.cli import entry; entry()", "run", str(data)]
    for a in agents:  # agent specs, or NAME.KEY=VALUE agent options
        cmd += ["--agent-option", a[1:]] if a.startswith("@") else ["-a", a]
    cmd += ["-o", str(out), "--json", *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(extra)}\n{done.stderr[-1500:]}")
    summary = json.loads(done.stdout)
    lines = out.read_text().splitlines()
    assert len(lines) == summary["images"], "every image once"
    engine = summary.get("engine") or {}
    return {
        # the local summary's wall_s starts once the agents are built; Ray's shards_s too
        "wall_s": engine.get("shards_s", summary["wall_s"]),
        "run_wall_s": summary["wall_s"],
        "workers_ready_s": engine.get("workers_ready_s"),
        "command_wall_s": wall,
        "images": summary["images"],
    }


def median_run(repeats: int, *args: Any) -> dict[str, Any]:
    runs = [one_run(*args) for _ in range(repeats)]
    return {
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "command_wall_s": statistics.median(r["command_wall_s"] for r in runs),
        "run_wall_s": statistics.median(r["run_wall_s"] for r in runs),
        "images": runs[0]["images"],
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--concurrency", "-j", type=int, default=4)
    parser.add_argument("--latency-s", type=float, default=0.2)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default="latency,instant")
    parser.add_argument("--quick", action="store_true", help="32 images, 1 repeat")
    parser.add_argument("--json-out", type=Path, default=ROOT / "bench/results/ray_scaling.json")
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats = 32, 1
    workers = [int(w) for w in args.workers.split(",")]
    j = args.concurrency
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    data = make_images(work / "data", args.images)
    head, address = start_cluster(cpus=max(workers))
    results: dict[str, Any] = {
        "images": args.images,
        "concurrency": j,
        "latency_s": args.latency_s,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "cases": {},
    }
    try:
        with openai_server([chat_reply(REPLY, delay_s=args.latency_s)]) as server:
            cases = {
                "latency": [  # "@" marks an --agent-option
                    "gpt=openai:test-model",
                    f"@gpt.base_url={server.base_url}",
                    f"@gpt.max_concurrency={max(workers) * j}",
                ],
                "instant": [agent_spec("a"), agent_spec("b")],
            }
            for case, agents in cases.items():
                if case not in args.cases.split(","):
                    continue
                row: dict[str, Any] = {}
                local = median_run(args.repeats, agents, data, work, ["-j", str(j)])
                row["local"] = {**local, "images_per_s": args.images / local["wall_s"]}
                for w in workers:
                    ray_args = ["--engine", "ray", "--ray-address", address, "--workers", str(w)]
                    got = median_run(args.repeats, agents, data, work, [*ray_args, "-j", str(j)])
                    row[f"ray_{w}"] = {**got, "images_per_s": args.images / got["wall_s"]}
                    if case == "latency":
                        ideal = w * j / (2 * args.latency_s)
                        row[f"ray_{w}"]["ideal_images_per_s"] = ideal
                        row[f"ray_{w}"]["efficiency"] = row[f"ray_{w}"]["images_per_s"] / ideal
                if case == "latency":
                    ideal = j / (2 * args.latency_s)
                    row["local"]["ideal_images_per_s"] = ideal
                    row["local"]["efficiency"] = row["local"]["images_per_s"] / ideal
                one = row.get("ray_1")
                if one:
                    row["ray_1_overhead_ms_per_image"] = (
                        1000 * (one["wall_s"] - local["wall_s"]) / args.images
                    )
                results["cases"][case] = row
                for name, r in row.items():
                    if isinstance(r, dict):
                        eff = f"  efficiency {r['efficiency']:.2f}" if "efficiency" in r else ""
                        print(
                            f"{case:8s} {name:8s} {r['images_per_s']:7.2f} images/s "
                            f"(deciding {r['wall_s']:.1f} s, run {r['run_wall_s']:.1f} s, "
                            f"command {r['command_wall_s']:.1f} s){eff}"
                        )
                print(f"{case:8s} ray(1 worker) - local: {row.get('ray_1_overhead_ms_per_image')}")
    finally:
        stop_cluster(head)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
