"""Where the CPU of a ``--engine ray`` run goes, per process kind: the driver, each ShardWorker,
the EndpointBudgets actor, raylet, gcs_server and Ray's other processes, on the latency-bound
case of bench_ray_scaling.py (bench/latency_server.py, -j 1 per process).

/proc/<pid>/stat is sampled every ``--every-s`` for the driver and every process of the cluster's
session; a process that exits keeps its last sample. Two figures per kind:
- ``total_ms_per_image``: all the CPU the kind used while the command ran, over the images
  (start-up included, like the benchmark's CPU per image);
- ``steady_ms_per_image``: CPU used between the server's 20% and 80% of calls, over the images
  decided meanwhile (calls / 2): the marginal cost of an image, without start-up and tail.

Usage:
  python bench/profile_ray_cpu.py --workers 1,2,4 --images 96 --json-out /tmp/ray_cpu.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ray_scaling import (
    ROOT,
    TICK,
    LatencyServer,
    env,
    make_images,
    start_cluster,
    stop_cluster,
)


def kind_of(cmdline: bytes) -> str:
    for prefix, kind in (
        (b"ray::ShardWorker", "shard_worker"),
        (b"ray::EndpointBudgets", "budgets_actor"),
        (b"ray::IDLE", "idle_worker"),
    ):
        if cmdline.startswith(prefix):
            return kind
    head = cmdline.split(b"\0")[:3]
    text = b" ".join(head).decode(errors="replace")
    for needle, kind in (("raylet", "raylet"), ("gcs_server", "gcs_server")):
        if needle in text:
            return kind
    return "ray_other"


def sample(session: int, driver: int, seen: dict[int, tuple[str, float]]) -> None:
    """Update ``seen`` (pid -> kind, CPU seconds so far) from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if pid == driver:
            kind = "driver"
        elif int(fields[3]) == session:
            kind = kind_of(cmdline)
        else:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        old = seen.get(pid)
        # an idle worker that becomes an actor is counted under the actor's kind from then on
        seen[pid] = (kind if old is None or kind != "ray_other" else old[0], cpu)


def by_kind(seen: dict[int, tuple[str, float]]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for kind, cpu in seen.values():
        out[kind] += cpu
    return dict(out)


def machine_busy() -> tuple[float, float]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / TICK, sum(fields) / TICK


def one_run(
    workers: int,
    images: int,
    cluster: tuple[int, str],
    work: Path,
    server: LatencyServer,
    every_s: float,
) -> dict[str, Any]:
    session, address = cluster
    data = work / "data"
    baseline: dict[int, tuple[str, float]] = {}
    sample(session, -1, baseline)
    server.reset()
    out = work / f"out-{workers}-{time.monotonic_ns()}.jsonl"
    cmd = [sys.executable, "-c", "from orchestrator.cli import entry; entry()", "run", str(data),
           "-a", "gpt=openai:bench-model", "--agent-option", f"gpt.base_url={server.base_url}",
           "-o", str(out), "--json", "--engine", "ray", "--ray-address", address,
           "--workers", str(workers), "-j", "1",
           "--endpoint-concurrency", str(workers)]  # fmt: skip
    busy0 = machine_busy()
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    seen: dict[int, tuple[str, float]] = {}
    marks: dict[str, tuple[int, dict[str, float]]] = {}
    while proc.poll() is None:
        sample(session, proc.pid, seen)
        calls = server.stats()["requests"]
        for name, share in (("from", 0.2), ("to", 0.8)):
            if name not in marks and calls >= share * 2 * images:
                marks[name] = (calls, by_kind(_since(seen, baseline)))
        time.sleep(every_s)
    summary = json.loads(proc.stdout.read())
    busy1 = machine_busy()
    total = by_kind(_since(seen, baseline))
    result: dict[str, Any] = {
        "workers": workers,
        "images": summary["images"],
        "shards_s": summary["engine"]["shards_s"],
        "images_per_s": summary["images"] / summary["engine"]["shards_s"],
        "machine_busy_share": (busy1[0] - busy0[0]) / (busy1[1] - busy0[1]),
        "total_ms_per_image": {k: 1000 * v / images for k, v in sorted(total.items())},
        "shard_workers": sum(1 for k, _ in seen.values() if k == "shard_worker"),
    }
    if "from" in marks and "to" in marks:
        (c0, k0), (c1, k1) = marks["from"], marks["to"]
        decided = (c1 - c0) / 2
        result["steady_ms_per_image"] = {
            k: 1000 * (k1.get(k, 0.0) - k0.get(k, 0.0)) / decided for k in sorted(k1)
        }
    return result


def _since(
    seen: dict[int, tuple[str, float]], baseline: dict[int, tuple[str, float]]
) -> dict[int, tuple[str, float]]:
    return {
        pid: (kind, cpu - baseline.get(pid, (kind, 0.0))[1]) for pid, (kind, cpu) in seen.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--every-s", type=float, default=0.25)
    parser.add_argument("--json-out", type=Path, default=ROOT / "bench/results/ray_cpu.json")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    work = Path(tempfile.mkdtemp(prefix="prof-ray-"))
    make_images(work / "data", args.images)
    head, address = start_cluster(cpus=max(workers))
    server = LatencyServer(0.2, work)
    rows = []
    try:
        time.sleep(3)  # the head's own start-up settles
        for w in workers:
            row = one_run(w, args.images, (head.pid, address), work, server, args.every_s)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        server.stop()
        stop_cluster(head)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.json_out}", file=sys.stderr)


if __name__ == "__main__":
    main()
