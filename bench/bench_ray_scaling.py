"""Throughput of ``trustorch run --engine ray`` with 1, 2 and 4 workers against the ideal of a
latency-bound run, with the CPU bound of this machine beside it; the per-image overhead of Ray
and of Postgres checkpoints over the local engine on SQLite.

Cases:
- ``latency``: one OpenAI-compatible agent on bench/latency_server.py (its own process) that
  answers every call after ``--latency-s`` (200 ms); default trust profiles are not trusted, so
  an image takes two calls one after the other (counted: the server's requests / images).
  Ideal images/s = processes x ``-j`` / (calls per image x latency); efficiency = measured /
  ideal. ``--endpoint-concurrency`` is the cluster's total under Ray (processes x ``-j``, so the
  shared limit is not what binds) and the server's most calls in flight at once is reported.
  CPU seconds per image are the run's own (``cpu_s`` of its summary: the deciding process, or
  the driver and every worker); the CPU-bound ceiling is cores / that, and ``bound`` says which
  of the two limits is lower. A run is latency-bound when the ideal is well under the ceiling:
  keep ``-j`` small (the default 1) on a small machine.
- ``overhead``: two FAKE scripted agents (tests/test_run_cli.py, through ``py:``) that answer
  at once: ms per image of the local engine on SQLite, Ray (1 worker) with its shards' SQLite
  files, Ray (1 worker) with the shards in Postgres, and the local engine on Postgres (a server
  of tests/postgres_server.py, fsync on), each against the local engine on SQLite.

Every Ray run joins one cluster that this script starts (``ray start --head``, its process group
killed at the end), so the cluster's start-up is not counted; the actors' start-up (building the
agents) is not either: images/s counts from the moment every actor has built its agents
(``shards_s``) to the last shard, like the local engine's ``wall_s``, which starts once its
agents are built. ``run_wall_s`` (Ray's connection and the actors' builds included) and the
command's wall are reported beside it.

Usage:
  python bench/bench_ray_scaling.py --quick --json-out /tmp/ray_scaling.json
  python bench/bench_ray_scaling.py --images 200 --repeats 3 -j 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_run_cli import agent_spec  # noqa: E402

CLUSTER_TOKEN = secrets.token_hex(32)
"""The token of the benchmark's own cluster (its head, its drivers)."""


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
        "RAY_AUTH_TOKEN": CLUSTER_TOKEN,
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


TICK = os.sysconf("SC_CLK_TCK")


def machine_cpu_s() -> tuple[float, float]:
    """Busy and total CPU seconds of the whole machine so far (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / TICK, sum(fields) / TICK


def process_cpu_s(pid: int) -> float:
    """user + system CPU seconds of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def cluster_system_cpu_s(session: int) -> float:
    """CPU seconds so far of the Ray cluster's own processes (raylet, GCS, idle workers: the
    session of ``ray start --head``), not of a run's actors (each run reports those)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[3]) == session and not cmdline.startswith(
            (b"ray::ShardWorker", b"ray::EndpointBudgets")
        ):
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


CLUSTER_SESSION = 0
"""The session id of the benchmark's Ray head (set once it starts)."""
SERVER_PID = 0
"""The latency server's pid while the latency case runs."""


def one_run(agents: list[str], data: Path, work: Path, extra: list[str]) -> dict[str, Any]:
    out = work / f"out-{time.monotonic_ns()}.jsonl"
    cmd = [sys.executable, "-c", "from orchestrator.cli import entry; entry()", "run", str(data)]
    for a in agents:  # agent specs, or NAME.KEY=VALUE agent options
        cmd += ["--agent-option", a[1:]] if a.startswith("@") else ["-a", a]
    cmd += ["-o", str(out), "--json", *extra]
    cluster_before, server_before = cluster_system_cpu_s(CLUSTER_SESSION), process_cpu_s(SERVER_PID)
    busy_before, total_before = machine_cpu_s()
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    busy, total = (a - b for a, b in zip(machine_cpu_s(), (busy_before, total_before), strict=True))
    cluster_cpu = cluster_system_cpu_s(CLUSTER_SESSION) - cluster_before
    server_cpu = process_cpu_s(SERVER_PID) - server_before if SERVER_PID else 0.0
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
        "cpu_s": summary["cpu_s"] + (cluster_cpu if engine else 0.0),
        "run_cpu_s": summary["cpu_s"],
        "cluster_system_cpu_s": cluster_cpu if engine else 0.0,
        "server_cpu_s": server_cpu,
        # what else ran on the machine meanwhile (other users, start-ups): a busy machine
        # lowers every number here
        "machine_busy_share": busy / total if total else None,
        "other_cpu_s": busy - summary["cpu_s"] - (cluster_cpu if engine else 0.0) - server_cpu,
        "command_cpu_s_total": busy,
        "driver_cpu_s": engine.get("driver_cpu_s"),
        "worker_cpu_s": engine.get("worker_cpu_s"),
        "limits_cpu_s": engine.get("limits_cpu_s"),
        "mean_latency_s": summary["mean_latency_s"],
        "endpoints": engine.get("endpoints"),
        "shards": engine.get("shards"),
        "images": summary["images"],
    }


def median_run(repeats: int, *args: Any, before: Any = None) -> dict[str, Any]:
    runs = []
    for _ in range(repeats):
        if before is not None:
            before()
        runs.append(one_run(*args))
    return {
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "command_wall_s": statistics.median(r["command_wall_s"] for r in runs),
        "run_wall_s": statistics.median(r["run_wall_s"] for r in runs),
        "cpu_s": statistics.median(r["cpu_s"] for r in runs),
        "machine_busy_share": statistics.median(r["machine_busy_share"] or 0 for r in runs),
        "other_cores": statistics.median(r["other_cpu_s"] / r["command_wall_s"] for r in runs),
        "mean_latency_s": statistics.median(r["mean_latency_s"] for r in runs),
        "images": runs[0]["images"],
        "runs": runs,
    }


class LatencyServer:
    """bench/latency_server.py in a process of its own, and its counters."""

    def __init__(self, delay_s: float, work: Path) -> None:
        port_file = work / "latency-port"
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench/latency_server.py"), "--delay-s", str(delay_s),
             "--port-file", str(port_file)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the latency server did not start")
            time.sleep(0.05)
        self.base_url = f"http://127.0.0.1:{port_file.read_text()}/v1"

    def _call(self, method: str, path: str) -> dict[str, Any]:
        request = urllib.request.Request(self.base_url[: -len("/v1")] + path, method=method)
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read())

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats")

    def reset(self) -> None:
        self._call("POST", "/reset")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def latency_case(
    args: argparse.Namespace, data: Path, work: Path, address: str, workers: list[int]
) -> dict[str, Any]:
    j, cores = args.concurrency, len(os.sched_getaffinity(0))
    global SERVER_PID
    server = LatencyServer(args.latency_s, work)
    SERVER_PID = server.proc.pid
    row: dict[str, Any] = {}
    try:
        runs = [("local", 1, ["-j", str(j)])]
        for w in workers:
            ray_args = ["--engine", "ray", "--ray-address", address, "--workers", str(w)]
            runs.append((f"ray_{w}", w, [*ray_args, "-j", str(j)]))
        for name, processes, extra in runs:
            agents = [  # "@" marks an --agent-option
                "gpt=openai:bench-model",
                f"@gpt.base_url={server.base_url}",
            ]
            extra = [*extra, "--endpoint-concurrency", str(processes * j)]
            got = median_run(args.repeats, agents, data, work, extra, before=server.reset)
            stats = server.stats()  # of the last repeat
            calls = stats["requests"] / args.images
            ideal = processes * j / (calls * args.latency_s)
            cpu_per_image = got["cpu_s"] / args.images
            ceiling = cores / cpu_per_image if cpu_per_image > 0 else math.inf
            # what the CPU left by everything else (start-ups, other users) allows
            left = max(cores - got["other_cores"], 0.0)
            ceiling_left = left / cpu_per_image if cpu_per_image > 0 else math.inf
            measured = args.images / got["wall_s"]
            row[name] = {
                **got,
                "processes": processes,
                "images_per_s": measured,
                "calls_per_image": calls,
                "max_in_flight": stats["max_in_flight"],
                "ideal_images_per_s": ideal,
                "efficiency": measured / ideal,
                "cpu_s_per_image": cpu_per_image,
                "cpu_bound_images_per_s": ceiling,
                "bound": "latency" if ideal <= ceiling else "cpu",
                "efficiency_vs_lower_bound": measured / min(ideal, ceiling),
                "cpu_left_cores": left,
                "cpu_bound_with_others_images_per_s": ceiling_left,
                "bound_with_others": "latency" if ideal <= ceiling_left else "cpu",
                # the calls of an image run one after the other: the rest of its latency is
                # its share of the CPU (graph, client, checkpoint) and waiting for the CPU
                "image_latency_over_calls_s": got["mean_latency_s"] - calls * args.latency_s,
            }
            r = row[name]
            print(
                f"latency  {name:8s} {measured:6.2f} images/s, ideal {ideal:5.2f} "
                f"(efficiency {r['efficiency']:.2f}); {1000 * cpu_per_image:.0f} ms CPU/image, "
                f"CPU ceiling {ceiling:5.1f} images/s on {cores} cores -> {r['bound']}-bound; "
                f"max in flight {stats['max_in_flight']} (limit {processes * j}); machine "
                f"{100 * got['machine_busy_share']:.0f}% busy, {got['other_cores']:.2f} cores "
                f"used by the rest -> ceiling {ceiling_left:.1f}, {r['bound_with_others']}-bound; "
                f"image latency {got['mean_latency_s']:.3f} s",
                flush=True,
            )
    finally:
        server.stop()
        SERVER_PID = 0
    return row


def overhead_case(args: argparse.Namespace, data: Path, work: Path, address: str) -> dict[str, Any]:
    from postgres_server import missing_reason, postgres_server

    agents = [agent_spec("a"), agent_spec("b")]
    j = ["-j", str(args.overhead_concurrency)]
    ray = ["--engine", "ray", "--ray-address", address, "--workers", "1"]
    row: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        setups: list[tuple[str, list[str]]] = [("local_sqlite", j), ("ray_1_sqlite", [*ray, *j])]
        if missing_reason() is None:
            pg = stack.enter_context(postgres_server(durable=True))
            for name, extra in (("ray_1_postgres", [*ray, *j]), ("local_postgres", j)):
                url = pg.create_database(name)
                setups.append((name, [*extra, "--checkpoint", url]))
        else:
            print(f"overhead: no Postgres case ({missing_reason()})")
        for name, extra in setups:
            got = median_run(args.repeats, agents, data, work, extra)
            row[name] = {**got, "images_per_s": args.images / got["wall_s"]}
    base = row["local_sqlite"]
    for name, r in row.items():
        r["overhead_ms_per_image"] = 1000 * (r["wall_s"] - base["wall_s"]) / args.images
        r["overhead_with_start_ms_per_image"] = (
            1000 * (r["command_wall_s"] - base["command_wall_s"]) / args.images
        )
        print(
            f"overhead {name:15s} {r['images_per_s']:7.1f} images/s, "
            f"{1000 * r['wall_s'] / args.images:6.1f} ms/image deciding "
            f"(+{r['overhead_ms_per_image']:.1f} over local SQLite; "
            f"+{r['overhead_with_start_ms_per_image']:.1f} with start-up), "
            f"{1000 * r['cpu_s'] / args.images:.0f} ms CPU/image",
            flush=True,
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--concurrency", "-j", type=int, default=1, help="-j of each process")
    parser.add_argument("--overhead-concurrency", type=int, default=4)
    parser.add_argument("--latency-s", type=float, default=0.2)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default="latency,overhead")
    parser.add_argument("--quick", action="store_true", help="32 images, 1 repeat")
    parser.add_argument("--json-out", type=Path, default=ROOT / "bench/results/ray_scaling.json")
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats = 32, 1
    workers = [int(w) for w in args.workers.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    data = make_images(work / "data", args.images)
    global CLUSTER_SESSION
    head, address = start_cluster(cpus=max(workers))
    CLUSTER_SESSION = head.pid
    results: dict[str, Any] = {
        "images": args.images,
        "concurrency": args.concurrency,
        "latency_s": args.latency_s,
        "repeats": args.repeats,
        "cores": len(os.sched_getaffinity(0)),
        "cases": {},
    }
    try:
        if "latency" in args.cases.split(","):
            row = latency_case(args, data, work, address, workers)
            results["cases"]["latency"] = row
            top = row.get(f"ray_{max(workers)}")
            if top is not None:
                results["efficiency_at_most_workers"] = {
                    "workers": max(workers),
                    "efficiency": top["efficiency"],
                    "bound": top["bound"],
                    "bound_with_others": top["bound_with_others"],
                    "at_least_0_8": top["efficiency"] >= 0.8,
                }
        if "overhead" in args.cases.split(","):
            results["cases"]["overhead"] = overhead_case(args, data, work, address)
    finally:
        stop_cluster(head)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
