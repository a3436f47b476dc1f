"""``trustorch run --engine ray``: the same decisions as the local engine, each image once in
``--out``, after a worker or the driver is killed mid-run (the heavy tests run on a real
two-node Ray cluster on 127.0.0.1 that the fixture starts and stops); the shard plan and merge
rules on their own; one-line errors.

Agents are the FAKE scripted agents of test_run_cli (loaded through ``py:``), which append one
line per call to a log file: the tests count which images reached an agent, in any process.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from test_run_cli import agent_spec, make_images, trustorch_command

from core.errors import InputError
from orchestrator.cli import main
from orchestrator.engines.shards import ShardFolder, merge_committed, plan_shards
from orchestrator.runner import JsonlWriter

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("ray")


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(x) for x in text[: text.rfind("\n") + 1].splitlines()]


def _calls(log: Path) -> list[tuple[str, str, int]]:
    if not log.exists():
        return []
    return [(a, sha, int(r)) for a, sha, r in (x.split() for x in log.read_text().splitlines())]


_CLUSTER_TOKEN = secrets.token_hex(32)


def _env() -> dict[str, str]:
    # RAY_AUTH_MODE=token: every node and driver of these tests sends this token (a machine
    # without ~/.ray/auth_token, such as a fresh CI runner, can start the cluster too)
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": _CLUSTER_TOKEN,
    }


def _run_cmd(data: Path, out: Path, log: Path, *extra: str, delay: float = 0.0) -> list[str]:
    return [
        *trustorch_command(),
        "run",
        str(data),
        "-a",
        agent_spec("a", log, delay=delay),
        "-a",
        agent_spec("b", log, delay=delay),
        "-o",
        str(out),
        "--json",
        *extra,
    ]


def test_ray_engine_decides_like_the_local_engine_each_image_once(tmp_path):
    data = make_images(tmp_path / "data", per_label=4)
    local_log, ray_log = tmp_path / "local.log", tmp_path / "ray.log"
    local_out, ray_out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    local = subprocess.run(
        _run_cmd(data, local_out, local_log), env=_env(), capture_output=True, timeout=300
    )
    assert local.returncode == 0, local.stderr.decode()
    cmd = _run_cmd(data, ray_out, ray_log, "--engine", "ray", "--workers", "2", "--shard-size", "2")
    ray_run = subprocess.run(cmd, env=_env(), capture_output=True, timeout=600)
    assert ray_run.returncode == 0, ray_run.stderr.decode()

    by_sha = {d["sha256"]: d for d in _lines(local_out)}
    lines = _lines(ray_out)
    assert len(lines) == 12 == len({d["sha256"] for d in lines}) == len(by_sha)
    for d in lines:
        want = by_sha[d["sha256"]]
        assert (d["label"], d["confidence"], d["rounds_used"]) == (
            want["label"],
            want["confidence"],
            want["rounds_used"],
        )
        # the same configuration, but for the log file the agents were given
        assert json.dumps(d["run"]).replace("ray.log", "local.log") == json.dumps(want["run"])
    # every image reached each agent once per round, in whichever worker
    assert Counter(_calls(ray_log)) == Counter(_calls(local_log))
    assert set(Counter(_calls(ray_log)).values()) == {1}
    summary = json.loads(ray_run.stdout)
    assert summary["decided"] == 12 and summary["engine"]["shards"] == 6
    assert len(summary["engine"]["worker_processes"]) == 2  # both actors took shards
    assert not (tmp_path / "ray.jsonl.shards").exists()  # removed once every image is in --out


def test_shards_cut_in_order_and_the_plan_survives_a_resume(tmp_path):
    shas = [f"{i:064x}" for i in range(10)]
    assert plan_shards(shas, workers=2, shard_size=None) == [
        shas[i : i + 2] for i in range(0, 10, 2)
    ]
    assert plan_shards(shas, workers=1, shard_size=4) == [shas[:4], shas[4:8], shas[8:]]
    folder = ShardFolder(tmp_path / "out.jsonl")
    first = folder.plan(shas[:6], workers=1, shard_size=4)
    assert first == [shas[:4], shas[4:6]]
    # a resumed run with other settings and more images keeps the shards it had
    again = folder.plan(shas, workers=3, shard_size=1)
    assert again[:2] == first and again[2:] == [[s] for s in shas[6:]]
    folder.check_can_start(resume=True)
    with pytest.raises(InputError, match="pass --resume"):
        folder.check_can_start(resume=False)


def test_merge_appends_each_committed_line_once(tmp_path):
    out = tmp_path / "out.jsonl"
    folder = ShardFolder(out)
    folder.path.mkdir()
    line = lambda i: {"sha256": f"{i:064x}", "label": "rust", "run": {"task": "t"}}  # noqa: E731
    (folder.path / "shard-00000.done.jsonl").write_text(
        "".join(json.dumps(line(i)) + "\n" for i in (0, 1, 2))
    )
    (folder.path / "shard-00000.checkpoints.sqlite").write_text("")
    (folder.path / "shard-00001.done.jsonl").write_text(json.dumps(line(3)) + "\n")
    (folder.path / "shard-00001.checkpoints.sqlite").write_text("")
    writer = JsonlWriter(out)
    written = {line(1)["sha256"]}  # already in --out (a merge cut short before its delete)
    appended = merge_committed(folder, writer, written, keep={1})
    writer.close()
    assert [d["sha256"] for d in appended] == [line(i)["sha256"] for i in (0, 2, 3)]
    assert all("run" not in d for d in appended)
    assert [d["sha256"] for d in _lines(out)] == [line(i)["sha256"] for i in (0, 2, 3)]
    assert _lines(out)[0]["run"] == {"task": "t"}
    # shard 0 is gone whole; shard 1 (with failed images) keeps its checkpoint
    assert sorted(p.name for p in folder.path.iterdir()) == ["shard-00001.checkpoints.sqlite"]


def _cli(tmp_path: Path, capsys, *args: str) -> tuple[int, str]:
    data = make_images(tmp_path / "data", per_label=1)
    code = main(["run", str(data), "-a", agent_spec("a"), "-o", str(tmp_path / "o.jsonl"), *args])
    return code, capsys.readouterr().err


def test_engine_usage_errors_exit_2(tmp_path, capsys):
    code, err = _cli(tmp_path, capsys, "--engine", "spark")
    assert code == 2 and "unknown engine 'spark'" in err
    code, err = _cli(tmp_path, capsys, "--engine", "ray", "--checkpoint", str(tmp_path / "c"))
    assert code == 2 and "OUT.shards" in err


def test_unreachable_ray_address_is_one_line(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, err = _cli(tmp_path, capsys, "--engine", "ray", "--ray-address", f"127.0.0.1:{port}")
    assert code == 1
    assert (
        err.strip().count("\n") == 0 and f"cannot reach the Ray cluster at 127.0.0.1:{port}" in err
    )


def test_missing_ray_says_which_extra_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    code, err = _cli(tmp_path, capsys, "--engine", "ray")
    assert code == 1 and "pip install 'trust-orchestrator[ray]'" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node and one more worker node on this machine (2 CPUs each), stopped at the end
    by killing the process groups of the two ``ray start --block`` processes. Ray 2.60's GCS
    listens on every interface and a node takes the machine's address whatever
    ``--node-ip-address`` says, so the cluster's address is read from the head's output; its
    token authentication (on by default) keeps other clients out."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    log = Path(temp) / "head.log"
    common = ["--num-cpus", "2", "--block", "--disable-usage-stats"]
    ray_bin = str(Path(sys.executable).with_name("ray"))
    with log.open("wb") as sink:
        head = subprocess.Popen(
            [ray_bin, "start", "--head", "--port", str(port), "--include-dashboard", "false",
             "--temp-dir", temp, *common],
            env=_env(), start_new_session=True, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    nodes = [head]
    try:
        address = _wait_for_address(log, head)
        nodes.append(
            subprocess.Popen(
                [ray_bin, "start", "--address", address, *common],
                env=_env(), start_new_session=True,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        _wait_for_nodes(address, 2)
        yield address
    finally:
        for proc in reversed(nodes):
            _stop_group(proc)


def _wait_for_address(log: Path, proc: subprocess.Popen, timeout_s: float = 180) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, "ray start --head exited: " + log.read_text()[-500:]
        match = re.search(r"ray start --address='([^']+)'", log.read_text())
        if match:
            return match.group(1)
        assert time.monotonic() < deadline, "the Ray head did not start in time"
        time.sleep(0.5)


def _wait_for_nodes(address: str, n: int, timeout_s: float = 180) -> None:
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
        "print(sum(1 for x in ray.nodes() if x['Alive']))"
    )
    deadline = time.monotonic() + timeout_s
    while True:
        done = subprocess.run(
            [sys.executable, "-c", probe, address], env=_env(), capture_output=True, timeout=180
        )
        if done.returncode == 0 and int(done.stdout.split()[-1]) >= n:
            return
        assert time.monotonic() < deadline, f"{n} Ray nodes did not come up: {done.stderr[-500:]}"
        time.sleep(1)


def _stop_group(proc: subprocess.Popen) -> None:
    # A throwaway cluster: a short grace, then the whole group goes (a Ray head took 30 s to
    # end on SIGTERM alone).
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _shard_worker_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ray::ShardWorker"):
                pids.append(int(entry.name))
    return pids


def _wait_until_no_shard_worker(timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while _shard_worker_pids():
        assert time.monotonic() < deadline, "Ray did not end the dead driver's workers"
        time.sleep(0.2)


def _done_so_far(out: Path) -> set[str]:
    """sha256s of every image whose line is written: in --out or in a shard file."""
    files = [out, *out.with_name(out.name + ".shards").glob("shard-*.jsonl")]
    return {d["sha256"] for f in files for d in _lines(f)}


def _check_exactly_once(out: Path, log: Path, done_before: set[str], calls_before: int) -> None:
    lines = _lines(out)
    assert len(lines) == 12 == len({d["sha256"] for d in lines})
    for d in lines:  # default profiles are not trusted: every image is looked at twice
        assert sorted((p["agent"], p["round"]) for p in d["predictions"]) == [
            ("a", 0), ("a", 1), ("b", 0), ("b", 1)
        ]  # fmt: skip
    later = _calls(log)[calls_before:]
    assert later, "nothing was left to do after the kill"
    assert not {sha for _, sha, _ in later} & done_before


def _cluster_run(data: Path, out: Path, log: Path, address: str, *, shard_size: int) -> list[str]:
    """Two workers, one image at a time each, agents answering in 0.5 s."""
    return _run_cmd(
        data, out, log, "--engine", "ray", "--ray-address", address,
        "--workers", "2", "--shard-size", str(shard_size), "-j", "1", delay=0.5,
    )  # fmt: skip


def _start_until(cmd: list[str], ready: Callable[[], bool]) -> subprocess.Popen:
    """Start ``cmd`` and return once ``ready()`` holds (it fails when the run ends first)."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not ready():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the run made no progress in 240 s"
        time.sleep(0.05)
    return proc


@pytest.mark.heavy
def test_killed_worker_is_retried_without_resending_finished_images(tmp_path, ray_cluster):
    data = make_images(tmp_path / "data", per_label=4)
    out, log = tmp_path / "out.jsonl", tmp_path / "calls.log"
    cmd = _cluster_run(data, out, log, ray_cluster, shard_size=6)
    proc = _start_until(cmd, lambda: len(_done_so_far(out)) >= 2)
    victims = _shard_worker_pids()
    assert victims, "no ShardWorker process found"
    os.kill(victims[0], signal.SIGKILL)
    done_before, calls_before = _done_so_far(out), len(_calls(log))
    assert len(done_before) < 12, "the kill came too late"
    stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stderr.decode()
    _check_exactly_once(out, log, done_before, calls_before)
    assert json.loads(stdout)["decided"] == 12, stdout


@pytest.mark.heavy
def test_killed_driver_resumes_exactly_once(tmp_path, ray_cluster):
    data = make_images(tmp_path / "data", per_label=4)
    out, log = tmp_path / "out.jsonl", tmp_path / "calls.log"
    cmd = _cluster_run(data, out, log, ray_cluster, shard_size=2)
    proc = _start_until(cmd, lambda: len(_lines(out)) >= 2)  # a shard merged into --out
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _wait_until_no_shard_worker()  # Ray ends the dead driver's actors
    done_before, calls_before = _done_so_far(out), len(_calls(log))
    assert len(done_before) < 12, "the kill came too late"
    resumed = subprocess.run([*cmd, "--resume"], env=_env(), capture_output=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr.decode()
    _check_exactly_once(out, log, done_before, calls_before)
    summary = json.loads(resumed.stdout)
    assert summary["already_done"] >= 2 and summary["images"] == 12


@pytest.fixture(scope="module")
def pg():
    from postgres_server import missing_reason, postgres_server

    if missing_reason() is not None:
        pytest.skip(str(missing_reason()))
    with postgres_server(durable=False) as server:
        yield server


@pytest.mark.heavy
def test_shards_checkpoint_into_postgres_and_a_killed_driver_resumes_exactly_once(
    tmp_path, ray_cluster, pg
):
    url = pg.create_database("ray_shards")
    data = make_images(tmp_path / "data", per_label=4)
    out, log = tmp_path / "out.jsonl", tmp_path / "calls.log"
    cmd = [*_cluster_run(data, out, log, ray_cluster, shard_size=2), "--checkpoint", url]

    def threads() -> int:
        if len(_lines(out)) < 2:  # the tables may not exist yet
            return 0
        return int(pg.sql("SELECT COUNT(DISTINCT thread_id) FROM checkpoints", "ray_shards"))

    # killed once a shard is in --out and a shard in progress checkpoints into the database
    proc = _start_until(cmd, lambda: len(_lines(out)) >= 2 and threads() >= 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _wait_until_no_shard_worker()
    done_before, calls_before = _done_so_far(out), _calls(log)
    assert len(done_before) < 12, "the kill came too late"
    assert not list((tmp_path / "out.jsonl.shards").glob("*.sqlite"))  # no checkpoint file

    resumed = subprocess.run([*cmd, "--resume"], env=_env(), capture_output=True, timeout=400)

    assert resumed.returncode == 0, resumed.stderr.decode()
    _check_exactly_once(out, log, done_before, len(calls_before))
    # a call made again is one that was in flight at the kill: one image per worker (-j 1),
    # both agents of a round at once
    again = Counter(_calls(log)[len(calls_before) :]) & Counter(calls_before)
    assert sum(again.values()) <= 2 * 2
    summary = json.loads(resumed.stdout)
    assert summary["checkpoint"] is None  # each committed shard's threads deleted
    assert pg.sql("SELECT COUNT(*) FROM checkpoints", "ray_shards") == "0"


@pytest.fixture
def latency_server(tmp_path):
    """bench/latency_server.py in a process of its own: answers each chat call after 0.1 s and
    counts the most calls it had in flight at once (``GET /stats``)."""
    port_file = tmp_path / "port"
    script = ROOT / "bench" / "latency_server.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--delay-s", "0.1", "--port-file", str(port_file)],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, "no latency server"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port_file.read_text()}"
    finally:
        proc.kill()
        proc.wait()


def test_workers_share_one_endpoint_limit_across_the_cluster(tmp_path, ray_cluster, latency_server):
    import urllib.request

    data = make_images(tmp_path / "data", per_label=4)
    out = tmp_path / "out.jsonl"
    cmd = [
        *trustorch_command(), "run", str(data), "-a", "gpt=openai:test-model",
        "--agent-option", f"gpt.base_url={latency_server}/v1", "-o", str(out), "--json",
        "--engine", "ray", "--ray-address", ray_cluster, "--workers", "2", "--shard-size", "3",
        "-j", "4", "--endpoint-concurrency", "3",
    ]  # fmt: skip
    done = subprocess.run(
        cmd, env={**_env(), "OPENAI_API_KEY": "sk-test"}, capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr.decode()
    summary = json.loads(done.stdout)
    with urllib.request.urlopen(f"{latency_server}/stats", timeout=10) as reply:
        stats = json.loads(reply.read())
    # 2 workers x 4 images x 1 agent could have 8 calls in flight; the cluster allows 3
    assert stats["requests"] == 24 and stats["statuses"] == {"200": 24}
    assert stats["max_in_flight"] == 3
    assert len(summary["engine"]["worker_processes"]) == 2
    (endpoint,) = summary["engine"]["endpoints"]
    assert endpoint["maximum"] == 3 and endpoint["peak_leased"] <= 3


@pytest.mark.heavy
def test_clip_runs_once_on_its_own_actor_and_batches_the_workers_images(
    tmp_path, capsys, ray_cluster, tiny_clip_dir
):
    from tiny_models import clip_with_token_limit

    clip = str(clip_with_token_limit(tiny_clip_dir, tmp_path / "clip"))
    data = make_images(tmp_path / "data", per_label=4)
    args = ["run", str(data), "-a", "clip", "--clip-model", clip, "--json", "-j", "4"]
    assert main([*args, "-o", str(tmp_path / "local.jsonl")]) == 0, capsys.readouterr().err
    local = {d["sha256"]: d for d in _lines(tmp_path / "local.jsonl")}
    cmd = [
        *trustorch_command(), *args, "-o", str(tmp_path / "ray.jsonl"), "--engine", "ray",
        "--ray-address", ray_cluster, "--workers", "2", "--shard-size", "3",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=_env(), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    remote = {d["sha256"]: d for d in _lines(tmp_path / "ray.jsonl")}
    assert remote.keys() == local.keys() and len(remote) == 12
    for sha, d in remote.items():
        (mine,), (theirs,) = d["predictions"], local[sha]["predictions"]
        assert mine["label"] == theirs["label"]
        assert mine["confidence"] == pytest.approx(theirs["confidence"], abs=1e-5)
    stats = json.loads(done.stdout)["engine"]["clip"]
    assert stats["device"] == "cpu" and stats["images"] == 12  # one model for both workers
    assert stats["batches"] < 12 and stats["largest_batch"] > 1  # images of several calls at once
