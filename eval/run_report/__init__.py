"""``trustorch eval report``: a run's decisions file pictured as one self-contained HTML page.

``lines`` streams and checks the JSONL, ``stats`` holds the streaming accumulators, ``figures``
counts a run's decisions into ``RunFigures`` (``read_run``), ``page`` and ``trace`` render them,
``cli`` is the command.
"""

from eval.run_report.figures import DEFAULT_MAX_ROWS, RunFigures, read_run
from eval.run_report.page import render_run_report
from eval.run_report.stats import LATENCY_SAMPLE, ConfidenceBins, LatencyStats

__all__ = [
    "DEFAULT_MAX_ROWS",
    "LATENCY_SAMPLE",
    "ConfidenceBins",
    "LatencyStats",
    "RunFigures",
    "read_run",
    "render_run_report",
]
