"""``trustorch run --engine ray``: the shards of ``orchestrator.engines.shards`` on Ray actors.

The driver (the CLI's process) plans the shards, starts ``--workers`` actors (and, when the run
needs them, the actor of the cluster-wide endpoint limits, ``cluster_limits``, and the one CLIP
of ``clip_actor``), hands each a shard at a time and merges every committed shard into
``--out`` as it comes back (the exactly-once and resume rules are in ``shards``). Each actor
builds the run's agents, trust profiles and policy once from the ``RunRecipe`` and runs all its
shards with them, ``-j`` images at once inside, on one event loop that lives as long as the
actor. A killed actor is restarted by Ray
and its shard retried (``MAX_RESTARTS`` times); a shard whose actor is lost for good is
reported as failed and left for ``--resume``.

Ray is imported only here, and only when the engine runs. Without ``--ray-address`` a local Ray
instance is started for the run (with as many CPUs as workers, at least the machine's) and
shut down after it; with one, the run joins that cluster, whose nodes must have the project
installed and see ``OUT.shards/`` and the run's input files at the same paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.errors import TrustorchError
from core.images import LabelledImage, SkippedImage
from orchestrator.engines.clip_actor import start_clip_actor
from orchestrator.engines.endpoint_budgets import start_budgets
from orchestrator.engines.recipe import (
    RunParts,
    RunRecipe,
    build_parts,
    calls_servers,
    shared_clip_needed,
)
from orchestrator.engines.settings import EngineSettings
from orchestrator.engines.shards import (
    ShardFolder,
    ShardJob,
    ShardResult,
    merge_committed,
    preload,
    run_shard,
)

MAX_RESTARTS = 4


class RayEngineError(TrustorchError):
    """Ray is missing, its cluster cannot be reached, or a worker could not start."""


class ShardWorker:
    """The body of one Ray actor: the run's parts, built once, and one event loop."""

    def __init__(self, recipe: RunRecipe) -> None:
        self.name = f"{os.uname().nodename}:{os.getpid()}"
        self.loop = asyncio.new_event_loop()
        self.parts: RunParts | None = None
        self.error: str | None = None
        try:
            self.parts = build_parts(recipe)
        except TrustorchError as e:
            self.error = str(e)
        preload()

    def ready(self) -> list[str]:
        """The build's notes; RayEngineError when the parts could not be built."""
        if self.parts is None:
            raise RayEngineError(f"a Ray worker could not build the run: {self.error}")
        return self.parts.notes

    def run(self, job: ShardJob) -> ShardResult:
        assert self.parts is not None, "ready() reports a failed build first"
        cpu = time.process_time()
        result = self.loop.run_until_complete(run_shard(self.parts, job, worker=self.name))
        result.cpu_s = time.process_time() - cpu
        return result

    def pid(self) -> int:
        return os.getpid()


def connect(settings: EngineSettings) -> bool:
    """Join the cluster at ``settings.ray_address``, or start a local one; whether this call
    started it (and so should shut it down)."""
    try:
        import ray
    except ImportError as e:
        from core.extras import missing_extra_error

        raise missing_extra_error(e, needed_by="--engine ray") from None
    if ray.is_initialized():
        return False
    if settings.ray_address:
        check_reachable(settings.ray_address)
    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if settings.ray_address:
            ray.init(address=settings.ray_address, **quiet)
        else:
            ray.init(num_cpus=max(settings.workers, os.cpu_count() or 1), **quiet)
        return True
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = settings.ray_address or "a local Ray instance"
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise RayEngineError(f"cannot start or reach Ray at {where}: {first}") from None


def check_reachable(address: str, *, timeout_s: float = 5.0) -> None:
    """RayEngineError when nothing listens at ``address`` (``host:port`` or
    ``ray://host:port``): Ray itself waits minutes for an absent cluster. ``auto`` (the cluster
    of this machine, found by Ray) is left to Ray."""
    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise RayEngineError(f"--ray-address {address!r} is not HOST:PORT (or ray://HOST:PORT)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise RayEngineError(
            f"cannot reach the Ray cluster at {address} ({e.strerror or e}); start it with "
            "'ray start --head' or leave out --ray-address for a local one"
        ) from None


def _cause(error: BaseException) -> BaseException:
    """The worker's own exception inside a Ray task error, when it has one."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


async def run_on_ray(
    recipe: RunRecipe,
    images: Sequence[LabelledImage],
    *,
    task: Any,
    out: Path,
    resume: bool,
    engine: EngineSettings,
    forget_when_done: bool,
    show_progress: bool,
    checkpoint: str | None = None,
) -> tuple[Any, list[str], bool]:
    """Decide ``images`` of ``task`` (the recipe's, loaded) on Ray into ``out`` (whose writer
    lock the caller holds), the shards checkpointing into their own files or into the
    PostgreSQL database ``checkpoint``: the summary, the workers' notes, and whether the
    shards' checkpoints are gone (every image is in ``out``)."""
    from orchestrator.runner import (
        JsonlWriter,
        RunSummary,
        check_output_can_start,
        check_same_run,
        every_agent_failed,
        read_output,
        summarise,
    )

    started, cpu = time.perf_counter(), time.process_time()
    folder = ShardFolder(out)
    check_output_can_start(out, resume=resume)
    folder.check_can_start(resume=resume)
    existing = read_output(out, repair=True)
    check_same_run(existing, recipe.run_config, out)
    written = set(existing.decisions)
    writer = JsonlWriter(out)
    try:
        merged = merge_committed(folder, writer, written)
        shards = folder.plan(
            [item.image.sha256 for item in images],
            workers=engine.workers,
            shard_size=engine.shard_size,
        )
        jobs = folder.jobs(
            shards,
            images,
            written,
            checkpoint=checkpoint,
            resume=resume,
            keep_threads=not forget_when_done,
        )

        def merge(result: ShardResult) -> None:
            keep = {result.index} if result.failed else set()
            merged.extend(merge_committed(folder, writer, written, keep=keep))

        details: dict[str, Any] = {}
        # Blocking on Ray here is fine: nothing else runs on this event loop. Ray prints its
        # greeting and its workers' events on stdout, which belongs to --json.
        with contextlib.redirect_stdout(sys.stderr):
            results, notes = (
                _run_jobs(recipe, jobs, engine, show_progress, merge, details) if jobs else ([], [])
            )
        merged += merge_committed(folder, writer, written)  # committed by a worker lost later
    finally:
        writer.close()
    failed = [f for r in results for f in r.failed]
    failed += [
        SkippedImage(source=item.image.source, reason=why)
        for job, why in _lost(jobs, results)
        for item in job.images
        if item.image.sha256 not in written
    ]
    removed = False
    if forget_when_done and not failed:
        folder.remove()
        removed = True
    batch = {item.image.sha256 for item in images}
    before = [
        {k: v for k, v in d.items() if k != "run"}
        for sha, d in existing.decisions.items()
        if sha in batch
    ]
    summary = RunSummary(
        images=len(images),
        decided=len(merged),
        already_done=sum(1 for item in images if item.image.sha256 in existing.decisions),
        resumed_from_checkpoint=sum(r.resumed_from_checkpoint for r in results),
        failed=failed,
        no_answer=[why for d in merged if (why := every_agent_failed(d)) is not None],
        dropped_partial_bytes=existing.dropped_bytes,
        metrics=summarise(before + [d for d in merged if d["sha256"] in batch], task),
        wall_s=time.perf_counter() - started,
    )
    summary.metrics["engine"] = {
        "name": "ray",
        "workers": engine.workers,
        "shards": len(jobs),
        "worker_processes": sorted({r.worker for r in results if r.worker}),
        "driver_cpu_s": time.process_time() - cpu,
        "worker_cpu_s": sum(r.cpu_s for r in results),
        **details,
    }
    engine_metrics = summary.metrics["engine"]
    summary.metrics["cpu_s"] = (
        engine_metrics["driver_cpu_s"]
        + engine_metrics["worker_cpu_s"]
        + engine_metrics.get("limits_cpu_s", 0.0)
    )
    return summary, notes, removed


def _lost(jobs: Sequence[ShardJob], results: Sequence[ShardResult]) -> list[tuple[ShardJob, str]]:
    done = {r.index for r in results}
    return [
        (job, "its Ray worker was lost; rerun with --resume")
        for job in jobs
        if job.index not in done
    ]


def _run_jobs(
    recipe: RunRecipe,
    jobs: Sequence[ShardJob],
    engine: EngineSettings,
    show_progress: bool,
    on_result: Callable[[ShardResult], None],
    details: dict[str, Any],
) -> tuple[list[ShardResult], list[str]]:
    """Run ``jobs`` on ``engine.workers`` actors, each taking the next shard when it is free,
    calling ``on_result`` as each shard comes back; the actors share each server's limit
    through one ``EndpointBudgets`` actor and the run's CLIP through one ``ClipEmbedder``
    (each when the run needs it). Returns the results of the shards that finished and the
    first worker's notes; ``details`` gets the seconds until every actor had built its parts
    (``workers_ready_s``, Ray's start included) and from then to the last shard
    (``shards_s``), the shared limits (``endpoints``) and the CLIP actor's batches (``clip``)."""
    started = time.perf_counter()
    from core.cli import progress_bar

    started_here = connect(engine)  # imports ray, or says how to install it
    import ray
    from ray.exceptions import RayActorError, RayError

    try:
        n_workers = min(engine.workers, len(jobs))
        run_id = uuid.uuid4().hex
        budgets = None
        if calls_servers(recipe):
            limits_name, budgets = start_budgets(run_id)
            recipe = dataclasses.replace(recipe, cluster_limits=limits_name, workers=n_workers)
        uses_clip, clip_model = shared_clip_needed(recipe)
        clip_actor = None
        if uses_clip:
            try:
                clip_name, clip_actor = start_clip_actor(run_id, clip_model)
            except RayError as e:
                cause = _cause(e)
                if isinstance(cause, TrustorchError):
                    raise cause from None
                raise RayEngineError(f"the CLIP actor failed to start: {cause}") from None
            recipe = dataclasses.replace(recipe, clip_actor=clip_name)
        actor_class = ray.remote(
            num_cpus=1, max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS
        )(ShardWorker)
        actors = [actor_class.remote(recipe) for _ in range(n_workers)]
        try:
            notes = ray.get([a.ready.remote() for a in actors])[0]
        except RayError as e:
            cause = _cause(e)
            if isinstance(cause, TrustorchError):
                raise cause from None
            raise RayEngineError(f"a Ray worker failed to start: {cause}") from None
        details["workers_ready_s"] = time.perf_counter() - started
        results: list[ShardResult] = []
        queue = list(jobs)
        pending: dict[Any, tuple[Any, ShardJob]] = {}
        progress = progress_bar(disable=not show_progress)
        with progress:
            bar = progress.add_task("classifying (ray)", total=sum(len(j.images) for j in jobs))
            for actor in actors:
                job = queue.pop(0)
                pending[actor.run.remote(job)] = (actor, job)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                actor, job = pending.pop(ready[0])
                progress.advance(bar, len(job.images))
                try:
                    results.append(ray.get(ready[0]))
                    on_result(results[-1])
                except RayActorError:
                    continue  # lost for good (restarts spent): it takes no more shards
                except RayError as e:
                    reason = f"{type(_cause(e)).__name__}: {_cause(e)}"
                    failed = [
                        SkippedImage(source=i.image.source, reason=reason) for i in job.images
                    ]
                    results.append(ShardResult(index=job.index, failed=failed))
                    on_result(results[-1])
                if queue:
                    next_job = queue.pop(0)
                    pending[actor.run.remote(next_job)] = (actor, next_job)
        details["shards_s"] = time.perf_counter() - started - details["workers_ready_s"]
        if budgets is not None:
            details["endpoints"] = ray.get(budgets.states.remote())
            details["limits_cpu_s"] = ray.get(budgets.cpu_s.remote())
        if clip_actor is not None:
            details["clip"] = ray.get(clip_actor.stats.remote())
        return results, notes
    finally:
        if started_here:
            ray.shutdown()
