"""Run a command and measure its own peak resident memory.

The command runs under a small Python process of its own, which reads its children's peak RSS:
a child forked straight from pytest keeps pytest's high-water mark across ``exec`` on Linux
(large once torch is imported), and ``RUSAGE_CHILDREN`` of pytest itself is the largest of every
child a test session ever waited for.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_MEASURE = """
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps([done.returncode, peak, done.stdout, done.stderr]))
"""


def run_with_peak_rss(
    cmd: list[str],
    *,
    timeout_s: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[int, int, str, str]:
    """Exit code, peak resident bytes of ``cmd``, its stdout and its stderr. ``timeout_s`` is a
    hang guard only."""
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=cwd,
        env=None if env is None else dict(env),
    )
    assert done.returncode == 0, done.stderr
    code, peak_kib, out, err = json.loads(done.stdout)
    return int(code), int(peak_kib) * 1024, out, err


def run_each_with_peak_rss(
    cmds: Sequence[list[str]],
    *,
    timeout_s: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> list[tuple[int, int, str, str]]:
    """``run_with_peak_rss`` of every command, all at once (each under its own measuring
    process, so one's peak does not count in another's), in the order given."""

    def measured(cmd: list[str]) -> tuple[int, int, str, str]:
        return run_with_peak_rss(cmd, timeout_s=timeout_s, cwd=cwd, env=env)

    with ThreadPoolExecutor(max_workers=max(1, len(cmds))) as pool:
        return list(pool.map(measured, cmds))
