"""Re-run the README's ``console`` blocks and show where their output differs.

Each ``$ command`` line (with ``\\`` continuations) runs in one temporary folder, in order, with
the virtual environment's ``bin`` first on ``PATH``; the lines after it up to the next ``$`` are
its expected output. Trailing spaces, wall-time figures and progress bars are ignored; an
expected output ending in a line ``...`` is compared up to there. The folder holds ``leaves/``
(one photo) and ``bad.csv`` (a confidence that is not a number) for the examples that use them.

    python tools/readme_check.py [README.md] [--update]

``--update`` writes the outputs of today into the README (review the diff before committing).
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"```console\n(.*?)```", re.S)
VOLATILE = re.compile(r"(wall s\s+│\s+)[0-9.]+|/tmp/[^\s]+")
PROGRESS = re.compile(r"━.*\d+/\d+")


def commands(block: str) -> list[tuple[str, list[str], list[str]]]:
    """(command, expected output, the command's lines as written) per ``$`` line."""
    out: list[tuple[str, list[str], list[str]]] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            i += 1
            continue
        cmd, raw = lines[i][2:], [lines[i]]
        while cmd.endswith("\\"):
            i += 1
            cmd = cmd[:-1] + " " + lines[i].strip()
            raw.append(lines[i])
        i += 1
        expected = []
        while i < len(lines) and not lines[i].startswith("$ "):
            expected.append(lines[i])
            i += 1
        out.append((cmd, expected, raw))
    return out


def normal(lines: list[str]) -> list[str]:
    kept = [x for x in lines if not PROGRESS.search(x)]
    return [VOLATILE.sub(lambda m: m.group(1) or "<tmp>", x.rstrip()) for x in kept]


def example_files(work: Path) -> None:
    from PIL import Image

    (work / "leaves" / "healthy").mkdir(parents=True)
    Image.new("RGB", (32, 32), (40, 140, 50)).save(work / "leaves" / "healthy" / "leaf.png")
    (work / "bad.csv").write_text("id,category,a_pred,a_conf\n1,rust,rust,high\n")


def run_block(block: str, work: Path, env: dict[str, str]) -> tuple[str, int]:
    """The block with each command's output as it is now, and how many outputs differed."""
    out_lines: list[str] = []
    differ = 0
    for cmd, expected, raw in commands(block):
        out_lines += raw
        if cmd.startswith("source "):
            out_lines += expected
            continue
        done = subprocess.run(cmd, shell=True, cwd=work, env=env, capture_output=True, text=True)
        got = [
            x.rstrip() for x in (done.stdout + done.stderr).splitlines() if not PROGRESS.search(x)
        ]
        want = normal(expected)
        shown = got
        if want and want[-1] == "...":
            shown = [*got[: len(want) - 1], "..."]
        diff = list(difflib.unified_diff(want, normal(shown), lineterm=""))
        print(f"[{'DIFFERS' if diff else 'same'}] $ {cmd} (exit {done.returncode})")
        if diff:
            differ += 1
            print("\n".join(diff[2:]))
        out_lines += shown
    return "\n".join(out_lines) + "\n", differ


def main() -> int:
    readme = Path(next((a for a in sys.argv[1:] if not a.startswith("-")), ROOT / "README.md"))
    update = "--update" in sys.argv
    env = {**os.environ, "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}", "COLUMNS": "100"}
    text = readme.read_text()
    differ = 0
    with tempfile.TemporaryDirectory() as work:
        example_files(Path(work))
        pieces: list[str] = []
        last = 0
        for match in BLOCK.finditer(text):
            fresh, n = run_block(match.group(1), Path(work), env)
            differ += n
            pieces += [text[last : match.start(1)], fresh if update else match.group(1)]
            last = match.end(1)
        pieces.append(text[last:])
    if update and differ:
        readme.write_text("".join(pieces))
        print(f"updated {differ} output(s) in {readme}")
    return 1 if differ and not update else 0


if __name__ == "__main__":
    sys.exit(main())
