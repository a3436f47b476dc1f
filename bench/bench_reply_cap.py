"""Reply-size benchmark: what one VLM reply costs on disk, a normal one and a hostile one.

``trustorch run`` (a real subprocess) classifies a few images with one ``openai`` agent whose
server is a loopback OpenAI-compatible server (tests/openai_server.py) answering every call
with the same reply. Measured in one run, each scenario beside the normal baseline:

- ``normal``: a valid answer with a one-sentence reason;
- ``huge_reason``: a valid answer whose reason is ``--reason-mb`` MB of text;
- ``huge_body`` (``--body-mb``): a reply body far over the adapter's byte cap, its size
  declared in Content-Length; ``huge_body_chunked``: the same streamed without a length.

For each: the exit status, the decision JSONL line bytes (mean and max), the SQLite checkpoint
bytes per image, the stored reason's length and whether it says it was truncated, the agent's
error when it failed, and the run's peak RSS (``os.wait4`` on the child).

Usage:
  python bench/bench_reply_cap.py                    # writes bench/results/reply_cap.json
  python bench/bench_reply_cap.py --images 4 --reason-mb 2 --body-mb 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from openai_server import ScriptedReply, chat_reply, huge_reply, openai_server  # noqa: E402

LABELS = ("healthy", "rust", "scab", "multiple_diseases")


def trustorch_command() -> list[str]:
    script = Path(sys.executable).with_name("trustorch")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from orchestrator.cli import entry; entry()"]


def answer(reason: str) -> str:
    return json.dumps({"label": "rust", "confidence": 0.8, "reason": reason})


def make_images(folder: Path, count: int) -> Path:
    from PIL import Image

    for i in range(count):
        label = LABELS[i % len(LABELS)]
        (folder / label).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 24), (40 + 50 * i, 120, 200 - 30 * i)).save(
            folder / label / f"leaf{i}.png"
        )
    return folder


def run_once(work: Path, images: Path, reply: ScriptedReply, count: int) -> dict[str, Any]:
    out = work / "out.jsonl"
    checkpoint = work / "checkpoints.sqlite"
    stdout, stderr = work / "stdout.txt", work / "stderr.txt"
    with openai_server([reply]) as server:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OPENAI_BASE_URL": server.base_url,
            "OPENAI_API_KEY": "sk-bench",
        }
        cmd = [
            *trustorch_command(),
            "run",
            str(images),
            "--agent",
            "vlm=openai:test-model",
            "--agent-option",
            "logprobs=false",
            "--agent-option",
            "max_retries=0",
            "--out",
            str(out),
            "--checkpoint",
            str(checkpoint),
            "--json",
        ]
        with stdout.open("wb") as so, stderr.open("wb") as se:
            proc = subprocess.Popen(cmd, env=env, stdout=so, stderr=se)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        calls = len(server.requests)
    lines = out.read_bytes().splitlines() if out.exists() else []
    decisions = [json.loads(line) for line in lines if b'"sha256"' in line]
    predictions = [p for d in decisions for p in d.get("predictions", [])]
    reasons = [p.get("reason") or "" for p in predictions]
    errors = sorted({p["error"] for p in predictions if p.get("error")})
    line_bytes = [len(line) + 1 for line in lines if b'"sha256"' in line]
    return {
        "exit_code": proc.returncode,
        "calls": calls,
        "decisions": len(decisions),
        "jsonl_line_bytes_mean": round(sum(line_bytes) / len(line_bytes)) if line_bytes else 0,
        "jsonl_line_bytes_max": max(line_bytes, default=0),
        "checkpoint_bytes_per_image": round(
            (checkpoint.stat().st_size if checkpoint.exists() else 0) / count
        ),
        "stored_reason_chars_max": max((len(r) for r in reasons), default=0),
        "reason_says_truncated": any("[truncated" in r for r in reasons),
        "agent_errors": errors[:3],
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "stderr_tail": stderr.read_text(errors="replace").strip().splitlines()[-1:]
        if proc.returncode
        else [],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--reason-mb", type=float, default=2.0)
    parser.add_argument("--body-mb", type=float, default=64.0, help="0: skip this scenario")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/reply_cap.json")
    args = parser.parse_args()

    scenarios: dict[str, ScriptedReply] = {
        "normal": chat_reply(answer("orange pustules on the upper surface")),
        "huge_reason": chat_reply(answer("y" * int(args.reason_mb * 1_000_000))),
    }
    if args.body_mb > 0:
        scenarios["huge_body"] = huge_reply(int(args.body_mb * 1_000_000), chunked=False)
        scenarios["huge_body_chunked"] = huge_reply(int(args.body_mb * 1_000_000))
    results: dict[str, Any] = {
        "images": args.images,
        "reason_mb": args.reason_mb,
        "body_mb": args.body_mb,
    }
    with tempfile.TemporaryDirectory() as tmp:
        images = make_images(Path(tmp) / "images", args.images)
        for name, reply in scenarios.items():
            work = Path(tmp) / name
            work.mkdir()
            results[name] = run_once(work, images, reply, args.images)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
