"""``trustorch run``: classify many images with the orchestration graph, resumably."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from core.cli import (
    JsonOption,
    TaskOption,
    at_least,
    checked_by,
    emit_json,
    number_in,
    output_file,
    positive_seconds,
    print_table,
    stderr_console,
    usage_error,
)
from core.files import WriterLock
from orchestrator.agent_kinds import agent_registry
from orchestrator.engines.settings import EngineSettings, check_engine_name
from orchestrator.policies.registry import check_policy_name, policy_names

if TYPE_CHECKING:
    from orchestrator.agent_kinds import RetrievalSettings


def run(
    paths: Annotated[list[Path], typer.Argument(help="Image files, folders or CSV manifests.")],
    agent: Annotated[
        list[str],
        typer.Option(
            "--agent",
            "-a",
            help=f"Agent spec, repeatable: {agent_registry().syntaxes()}; prefix name= to name "
            "it (gpt=openai:gpt-4o).",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Output JSONL file.", callback=output_file("the output")),
    ],
    task: TaskOption = "apple-leaf",
    trust: Annotated[
        Path | None, typer.Option("--trust", help="Trust profiles JSON (trustorch eval trust).")
    ] = None,
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            help=f"Fusion policy: {', '.join(policy_names())}.",
            callback=checked_by(check_policy_name),
        ),
    ] = "trust",
    policy_file: Annotated[
        Path | None,
        typer.Option(
            "--policy-file",
            help="A fitted policy (eval replay --save-policy); the family it chose decides.",
        ),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option(
            "--alpha",
            help="Answer only when the conformal prediction set at miscoverage ALPHA holds one "
            "label, else abstain with the set (needs a --policy-file saved with --alpha).",
            callback=number_in(0.0, 1.0),
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an existing --out (skip finished images).")
    ] = False,
    concurrency: Annotated[
        int,
        typer.Option("--concurrency", "-j", help="Images at once.", callback=at_least(1)),
    ] = 4,
    endpoint_concurrency: Annotated[
        int | None,
        typer.Option(
            "--endpoint-concurrency",
            help="Calls in flight at most per OpenAI-compatible server, shared by its agents and "
            "lowered while it answers 429/503 (default: -j times the agents on that server); "
            "with --engine ray, the total of every worker.",
            callback=at_least(1),
        ),
    ] = None,
    max_rounds: Annotated[
        int,
        typer.Option(
            "--max-rounds", help="Rounds at most (1 = no re-evaluation).", callback=at_least(1)
        ),
    ] = 2,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            help="SQLite checkpoint file (default: OUT.checkpoints.sqlite), or a PostgreSQL "
            "database postgresql://USER@HOST:PORT/DB (password from PGPASSWORD or ~/.pgpass), "
            "which the shards of --engine ray share too.",
            callback=checkpoint_target,
        ),
    ] = None,
    keep_checkpoint: Annotated[
        bool,
        typer.Option(
            "--keep-checkpoint",
            help="Keep the checkpoint after a run that decided every image (default: remove it).",
        ),
    ] = False,
    agent_option: Annotated[
        list[str] | None,
        typer.Option(
            "--agent-option",
            help="key=value for every agent whose kind takes key (timeout_s=30), or "
            "kind.key=value / name.key=value for some agents only (openai.max_concurrency=8, "
            "gpt.neighbour_images=2); values are JSON or text. Repeatable.",
        ),
    ] = None,
    agent_timeout: Annotated[
        float | None,
        typer.Option(
            "--agent-timeout",
            help="Seconds before an agent call fails.",
            callback=positive_seconds,
        ),
    ] = None,
    index_dir: Annotated[
        str | None,
        typer.Option(
            "--index-dir", help="Image index folder for retrieval (trustorch index build)."
        ),
    ] = None,
    chroma_url: Annotated[
        str | None, typer.Option("--chroma-url", help="Chroma server for retrieval.")
    ] = None,
    clip_model: Annotated[
        str | None, typer.Option("--clip-model", help="CLIP hub id or folder (shared).")
    ] = None,
    llm_model: Annotated[
        str | None,
        typer.Option(
            "--llm-model", envvar="TRUSTORCH_LLM_MODEL", help="Orchestrator model of --policy llm."
        ),
    ] = None,
    llm_base_url: Annotated[
        str | None,
        typer.Option(
            "--llm-base-url",
            envvar="TRUSTORCH_LLM_BASE_URL",
            help="OpenAI-compatible server of --policy llm (key: OPENAI_API_KEY).",
        ),
    ] = None,
    llm_price_file: Annotated[
        Path | None,
        typer.Option(
            "--llm-price-file",
            help='Token prices of --policy llm, {"model": {"input": ..., "output": ...}} '
            "(USD per 1M tokens; default: the built-in table).",
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="local (this process) or ray (shards on a Ray cluster; pip install "
            "'trust-orchestrator[ray]').",
            callback=checked_by(check_engine_name),
        ),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="Ray cluster to join (ray start --head prints it; default: start a local one).",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers", help="Ray workers (each builds the agents once).", callback=at_least(1)
        ),
    ] = 2,
    shard_size: Annotated[
        int | None,
        typer.Option(
            "--shard-size",
            help="Images per shard of --engine ray (default: about 4 shards per worker).",
            callback=at_least(1),
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every graph step.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Classify images with several agents, trust-aware fusion and retrieval, resumably.

    PATH is an image file, a folder or a CSV manifest (columns path,label).
    A folder in the ImageFolder layout DIR/<label>/* gives the true labels.
    Each image gets one JSON line in --out, written whole or not at all.
    --resume continues a killed run; finished images are not sent to any agent again.
    One run at a time writes an --out (OUT.lock): a second one is refused.
    The checkpoint (OUT.checkpoints.sqlite) is removed once every image is decided, unless
    --keep-checkpoint. A run in which every agent failed on every image exits with code 1.

    Agents: see --agent; their options (the same as trustorch agents predict -o) go with
    --agent-option and are part of the run's configuration that --resume checks.

    Examples:

      trustorch run leaves/ --agent clip --agent openai:gpt-4o --trust trust.json --out r.jsonl

      trustorch run leaves/ --agent clip --out r.jsonl --resume --concurrency 8 -v

      trustorch run leaves/ --agent clip --policy llm --llm-model o3-mini --out r.jsonl --json

      trustorch run leaves/ -a gpt=openai:gpt-4o -a rag=retrieval --policy-file p.json -o r.jsonl

      trustorch run leaves/ -a clip -a gpt=openai:gpt-4o --agent-option gpt.timeout_s=30 -o r.jsonl

    --engine ray splits the images into shards run by Ray workers (--workers, --ray-address);
    each shard's lines reach --out once, when the shard is done; --resume works the same.
    --endpoint-concurrency is then the cluster's total per server.

      trustorch run leaves/ -a clip -a gpt=openai:gpt-4o -o r.jsonl --engine ray --workers 4

      trustorch run leaves/ -a gpt=openai:gpt-4o -o r.jsonl --engine ray --endpoint-concurrency 16

      trustorch run leaves/ -a clip -o r.jsonl --engine ray --checkpoint postgresql://u@db:5432/runs

    --policy-file replaces the trust policy's default weights and thresholds by those fitted
    by trustorch eval replay --save-policy (they apply to the agent names they were fitted on).
    """
    from contextlib import nullcontext

    from core.files import writer_lock
    from core.redact import redact_url
    from orchestrator.agent_kinds import RetrievalSettings
    from orchestrator.checkpoint import is_postgres, remove_checkpoint
    from orchestrator.components import LlmSettings
    from orchestrator.runner import default_checkpoint_path

    if alpha is not None and (policy_file is None or not 0.0 < alpha < 1.0):
        raise usage_error(
            "needs a value strictly between 0 and 1 and a --policy-file saved by "
            "trustorch eval replay --save-policy FILE --alpha A",
            option="--alpha",
        )
    engine_settings = EngineSettings(
        name=engine, ray_address=ray_address, workers=workers, shard_size=shard_size
    )
    engine_settings.check(checkpoint=checkpoint, verbose=verbose)
    checkpoint_path = checkpoint or default_checkpoint_path(out)
    on_file = not is_postgres(checkpoint_path)
    if on_file and Path(checkpoint_path).resolve() == out.resolve():
        raise usage_error("the checkpoint cannot be the output file", option="--checkpoint")
    # One run at a time per output and per checkpoint file, held to the end and taken before
    # anything loads, so that a second run is refused at once and writes nothing. (A Postgres
    # checkpoint is held by an advisory lock per run configuration: open_checkpointer.)
    with (
        writer_lock(out, what="the output") as out_lock,
        writer_lock(checkpoint_path, what="the checkpoint") if on_file else nullcontext(),
    ):
        summary, notes, emptied = asyncio.run(
            _run(
                paths=paths,
                specs=agent,
                agent_options=agent_option or [],
                out=out,
                task_name=task,
                trust=trust,
                policy_name=policy,
                policy_file=policy_file,
                alpha=alpha,
                resume=resume,
                concurrency=concurrency,
                endpoint_concurrency=endpoint_concurrency,
                max_rounds=max_rounds,
                checkpoint=checkpoint_path,
                out_lock=out_lock,
                forget_when_done=not keep_checkpoint,
                agent_timeout=agent_timeout,
                retrieval=RetrievalSettings(
                    index_dir=index_dir, chroma_url=chroma_url, clip_model=clip_model
                ),
                want_retriever=bool(index_dir or chroma_url),
                llm=LlmSettings(
                    model=llm_model,
                    base_url=llm_base_url,
                    price_file=str(llm_price_file) if llm_price_file else None,
                ),
                verbose=verbose,
                show_progress=True,
                engine=engine_settings,
            )
        )
        # The default checkpoint belongs to this --out alone: once every image is in --out it
        # goes whole. A --checkpoint given may be shared: it goes when no thread is left.
        removed = not keep_checkpoint and not summary.failed and (emptied or checkpoint is None)
        if removed:
            remove_checkpoint(checkpoint_path)
    if as_json:
        kept = None if removed else redact_url(str(checkpoint_path))
        emit_json({**summary.to_dict(), "notes": notes, "out": str(out), "checkpoint": kept})
    else:
        _print_summary(summary, out)
    if summary.failed:
        stderr_console().print(
            f"{len(summary.failed)} image(s) failed and are not in {out}; "
            "rerun with --resume to retry them",
            highlight=False,
            markup=False,
        )
    if summary.every_agent_failed_everywhere:
        typer.echo(
            f"error: every agent failed on every image ({summary.decided} images; first: "
            f"{summary.no_answer[0]}); their lines in {out} hold no agent's answer",
            err=True,
        )
    if summary.failed or summary.every_agent_failed_everywhere:
        raise typer.Exit(1)


def checkpoint_target(value: str | None) -> str | Path | None:
    """Option callback of ``--checkpoint``: a ``postgresql://`` URL as given, else a file path
    that can be written (``core.files.check_output_file``)."""
    from orchestrator.checkpoint import is_postgres

    if value is None or is_postgres(value):
        return value
    return output_file("the checkpoint")(Path(value))


def run_configuration(
    *,
    task: str,
    specs: list[str],
    agent_options: dict[str, dict[str, Any]],
    policy: str,
    trust: Path | None,
    policy_file: Path | None,
    max_rounds: int,
    retrieval: RetrievalSettings,
    llm_model: str | None,
    alpha: float | None = None,
) -> dict[str, Any]:
    """What decides a run's answers, as plain JSON values: a resumed run must match it.
    ``agent_options`` (checked option values by agent spec, API keys left out) is left out when
    empty, so files written before agents took options on ``run`` still resume."""
    from core.redact import redact_url
    from eval.recorded.records import file_sha256

    def where(path: str | None) -> str | None:
        return str(Path(path).expanduser().resolve()) if path else None

    config: dict[str, Any] = {
        "task": task,
        "agents": list(specs),
        "clip_model": retrieval.clip_model,
        "policy": policy,
        "llm_model": llm_model,
        "trust_sha256": file_sha256(trust) if trust is not None else None,
        "policy_file_sha256": file_sha256(policy_file) if policy_file is not None else None,
        "max_rounds": max_rounds,
        "index": where(retrieval.index_dir) or redact_url(retrieval.chroma_url or "") or None,
        "k": retrieval.k,
    }
    if agent_options:
        config["agent_options"] = agent_options
    if alpha is not None:
        config["alpha"] = alpha
    return config


async def _run(
    *,
    paths: list[Path],
    specs: list[str],
    agent_options: list[str],
    out: Path,
    task_name: str,
    trust: Path | None,
    policy_name: str,
    policy_file: Path | None,
    alpha: float | None,
    resume: bool,
    concurrency: int,
    endpoint_concurrency: int | None,
    max_rounds: int,
    checkpoint: str | Path,
    out_lock: WriterLock,
    forget_when_done: bool,
    agent_timeout: float | None,
    retrieval: Any,
    want_retriever: bool,
    llm: Any,
    verbose: bool,
    show_progress: bool,
    engine: EngineSettings,
) -> tuple[Any, list[str], bool]:
    """The summary, the notes, and whether the checkpoint holds nothing any more."""
    from agents.options import parse_option_items
    from core.task import load_task
    from eval.profile import load_trust_profiles
    from orchestrator.checkpoint import checkpoint_is_empty, is_postgres, open_checkpointer
    from orchestrator.engines.recipe import RunRecipe, build_parts
    from orchestrator.inputs import collect_images
    from orchestrator.runner import (
        check_output_can_start,
        check_same_run,
        read_output,
        run_batch,
    )

    console = stderr_console()
    task = load_task(task_name)
    # Cheap inputs first: a bad trust or policy file, or resuming a file another setup wrote,
    # fails before any image is read or model loads.
    trust_profiles = load_trust_profiles(trust) if trust is not None else None
    registry = agent_registry(retrieval)
    parsed = [registry.parse(spec) for spec in specs]
    items = parse_option_items(agent_options, flag="--agent-option")
    options = registry.assign_options(parsed, items, flag="--agent-option")
    run_config = run_configuration(
        task=task.name,
        specs=specs,
        agent_options={
            s.text: recorded
            for s, o in zip(parsed, options, strict=True)
            if (recorded := registry.recorded_options(s, o))
        },
        policy=policy_name,
        trust=trust,
        policy_file=policy_file,
        max_rounds=max_rounds,
        retrieval=retrieval,
        llm_model=llm.model if policy_name == "llm" else None,
        alpha=alpha,
    )
    check_output_can_start(out, resume=resume)
    if resume:
        check_same_run(read_output(out, repair=False), run_config, out)
    fitted = None
    if policy_file is not None:
        from orchestrator.policies.policy_file import load_fitted_policy

        fitted = load_fitted_policy(policy_file)
    collected = collect_images(paths, task=task)
    notes: list[str] = []
    for item in collected.skipped:
        notes.append(f"skipped {item.source}: {item.reason}")
    for item in collected.duplicates:
        notes.append(f"skipped {item.source}: {item.reason}")
    recipe = RunRecipe(
        specs=tuple(specs),
        agent_options=tuple(agent_options),
        task_name=task_name,
        run_config=run_config,
        trust=trust,
        policy_name=policy_name,
        policy_file=policy_file,
        alpha=alpha,
        max_rounds=max_rounds,
        agent_timeout=agent_timeout,
        retrieval=retrieval,
        want_retriever=want_retriever,
        llm=llm,
        concurrency=concurrency,
        endpoint_concurrency=endpoint_concurrency,
    )
    if engine.name == "ray":
        from orchestrator.engines.ray_engine import run_on_ray

        for note in notes:
            console.print(f"note: {note}", highlight=False)
        summary, worker_notes, emptied = await run_on_ray(
            recipe,
            collected.images,
            task=task,
            out=out,
            resume=resume,
            engine=engine,
            forget_when_done=forget_when_done,
            show_progress=show_progress,
            checkpoint=str(checkpoint) if is_postgres(checkpoint) else None,
        )
        notes += worker_notes
        summary.skipped = [*collected.skipped, *collected.duplicates]
        return summary, notes, emptied
    parts = build_parts(recipe, trust_profiles=trust_profiles, fitted=fitted)
    notes += parts.notes
    for note in notes:
        console.print(f"note: {note}", highlight=False)
    emptied = False
    cpu = time.process_time()
    async with open_checkpointer(checkpoint, owner=run_config) as saver:
        graph = parts.graph(saver)
        summary = await run_batch(
            graph,
            collected.images,
            task=task,
            out=out,
            resume=resume,
            concurrency=concurrency,
            show_progress=show_progress,
            verbose=verbose,
            run_config=run_config,
            lock=out_lock,
        )
        if forget_when_done and not summary.failed:
            # every image is in --out now: its threads are of no more use
            for item in collected.images:
                await graph.forget(item.image)
            emptied = await checkpoint_is_empty(saver)
    summary.metrics["cpu_s"] = time.process_time() - cpu
    summary.skipped = [*collected.skipped, *collected.duplicates]
    summary.metrics["agents_without_profile"] = parts.agents_without_profile()
    return summary, notes, emptied


def _print_summary(summary: Any, out: Path) -> None:
    data = summary.to_dict()
    coverage = data.get("coverage")
    rows = [
        ("images", data["images"]),
        ("decided now", data["decided"]),
        ("already in output", data["already_done"]),
        ("skipped (unreadable, duplicate)", len(data["skipped"])),
        ("failed", len(data["failed"])),
        ("answered (coverage)", _with_share(data.get("answered"), coverage)),
        ("abstained", data.get("abstained")),
        ("policy fallbacks", data.get("policy_fallbacks")),
        ("re-evaluation rate", data.get("reeval_rate")),
        ("agent failures", data.get("agent_failures")),
        ("labelled", data.get("labelled")),
    ]
    if data.get("labelled_answered"):
        rows += [
            ("accuracy (answered)", data.get("accuracy")),
            ("accuracy (abstentions wrong)", data.get("accuracy_all")),
            ("macro F1 (answered)", data.get("macro_f1")),
            (f"ECE ({data.get('ece_bins')} bins, answered)", data.get("ece")),
            ("Brier (answered)", data.get("brier")),
            (f"OCR (> {data.get('ocr_threshold')})", data.get("ocr")),
            ("CCC", data.get("ccc")),
        ]
    rows += [("cost (USD)", data.get("cost_usd")), ("wall time (s)", data["wall_s"])]
    print_table(f"run summary -> {out}", ["metric", "value"], rows)
    for line in summary_warnings(data):
        typer.echo(line, err=True)


def _with_share(count: int | None, share: float | None) -> str | None:
    return None if count is None else f"{count} ({share:.1%})" if share is not None else str(count)


def summary_warnings(data: dict[str, Any]) -> list[str]:
    """Lines that say what the table alone would hide: every decision abstained (the commonest
    reason, and agents without trust profiles), the policy falling back instead of deciding its
    own way."""
    lines = []
    decided = data.get("n") or 0
    if decided and data.get("answered") == 0:
        reasons = data.get("abstention_reasons") or [{"reason": "?"}]
        untrusted = data.get("agents_without_profile") or []
        hint = (
            f"; no trust profile for {', '.join(untrusted)}: fit them on labelled images with "
            "'trustorch eval trust' and pass --trust"
            if untrusted
            else ""
        )
        lines.append(
            f"every decision abstained ({decided} images){hint}; commonest reason: "
            f"{reasons[0]['reason']}"
        )
    if data.get("policy_fallbacks"):
        reasons = data.get("policy_fallback_reasons") or [{"reason": "?"}]
        lines.append(
            f"the policy fell back to its fallback rule on {data['policy_fallbacks']} of "
            f"{decided} decisions; commonest reason: {reasons[0]['reason']}"
        )
    return lines
