"""Start-up time: ``trustorch --help`` and ``trustorch eval --help`` against ``python -c pass``.

Each command runs ``--runs`` times in a fresh interpreter, in turn, in one run of this script;
the median wall and CPU seconds are reported, with the bare interpreter's as the baseline and
the product's time over it. The CLI is started as ``python -c "from orchestrator.cli import
entry; entry()"`` from the repository root, so it is this checkout's code that is timed. Each
command also reports which of the heavy libraries its process imported (there should be none).

Usage:
  python bench/bench_startup.py                  # writes bench/results/startup.json
  python bench/bench_startup.py --runs 9 --json-out /tmp/startup.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from orchestrator.cli import entry; entry()"]
HEAVY = ("torch", "transformers", "chromadb", "langgraph", "netcal", "openai", "sklearn", "scipy")
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "trustorch --help": [*CLI, "--help"],
    "trustorch eval --help": [*CLI, "eval", "--help"],
}
IMPORTED = (
    "import contextlib, io, json, sys\n"
    "from orchestrator.cli import main\n"
    "with contextlib.redirect_stdout(io.StringIO()):\n"
    "    main(sys.argv[1:])\n"
    "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
)


def one_run(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``argv`` in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def heavy_imports(args: list[str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", IMPORTED, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [m for m in json.loads(done.stdout) if m in HEAVY]


def measure(runs: int) -> dict[str, Any]:
    for argv in COMMANDS.values():  # warm-up: compiled files, the OS's file cache
        one_run(argv)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in COMMANDS}
    for _ in range(runs):  # in turn, so that a busy moment hits every command alike
        for name, argv in COMMANDS.items():
            times[name].append(one_run(argv))
    out: dict[str, Any] = {"runs": runs, "python": sys.version.split()[0]}
    bare = statistics.median(w for w, _ in times["python -c pass"])
    for name, samples in times.items():
        wall = statistics.median(w for w, _ in samples)
        out[name] = {
            "median_wall_s": wall,
            "median_cpu_s": statistics.median(c for _, c in samples),
            "min_wall_s": min(w for w, _ in samples),
            "over_bare_python_s": wall - bare,
        }
    out["trustorch --help"]["heavy_imports"] = heavy_imports(["--help"])
    out["trustorch eval --help"]["heavy_imports"] = heavy_imports(["eval", "--help"])
    out["target_s"] = {"trustorch --help": 0.5}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json-out", type=Path, default=ROOT / "bench/results/startup.json")
    args = parser.parse_args()
    result = measure(args.runs)
    for name in COMMANDS:
        r = result[name]
        extra = f", heavy imports: {r['heavy_imports'] or 'none'}" if "heavy_imports" in r else ""
        print(
            f"{name}: median {r['median_wall_s']:.3f} s wall, {r['median_cpu_s']:.3f} s CPU "
            f"(+{r['over_bare_python_s']:.3f} s over python -c pass){extra}"
        )
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
