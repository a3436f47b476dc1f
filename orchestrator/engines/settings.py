"""Which engine runs the images of ``trustorch run``, and its settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ENGINES = ("local", "ray")


def check_engine_name(name: str) -> None:
    """ValueError when ``name`` is not an engine (a ``checked_by`` check)."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose {' or '.join(ENGINES)}")


@dataclass(frozen=True)
class EngineSettings:
    """``local``: this process runs every image. ``ray``: shards of ``shard_size`` images (by
    default about four per worker) go to ``workers`` Ray actors, on the cluster at
    ``ray_address`` or on a local one started for the run."""

    name: str = "local"
    ray_address: str | None = None
    workers: int = 2
    shard_size: int | None = None

    def check(self, *, checkpoint: str | Path | None, verbose: bool) -> None:
        """A usage error for options the engine does not take (a checkpoint file: the shards
        keep theirs in OUT.shards/, or share a PostgreSQL database)."""
        from core.cli import usage_error
        from orchestrator.checkpoint import is_postgres

        if self.name == "local":
            return
        if checkpoint is not None and not is_postgres(checkpoint):
            raise usage_error(
                "--engine ray keeps one checkpoint per shard in OUT.shards/, or shares a "
                "PostgreSQL database (postgresql://...); give no file",
                option="--checkpoint",
            )
        if verbose:
            raise usage_error("--engine ray does not log graph steps; leave it out", option="-v")
