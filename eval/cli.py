"""``trustorch eval``: calibration evaluation and trust profiles of recorded predictions."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Offline evaluation: calibration, trust profiles, retrieval, replay.", no_args_is_help=True
)
