"""Re-run the README's ``console`` blocks and show where their output differs.

Each ``$ command`` line (with ``\\`` continuations) runs in one temporary folder, in order, with
the virtual environment's ``bin`` first on ``PATH``; the lines after it up to the next ``$`` are
its expected output. Trailing spaces and wall-time figures are ignored.

    python tools/readme_check.py [README.md] [--update]
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


def commands(block: str) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            i += 1
            continue
        cmd = lines[i][2:]
        while cmd.endswith("\\"):
            i += 1
            cmd = cmd[:-1] + " " + lines[i].strip()
        i += 1
        expected = []
        while i < len(lines) and not lines[i].startswith("$ "):
            expected.append(lines[i])
            i += 1
        out.append((cmd, expected))
    return out


def normal(lines: list[str]) -> list[str]:
    return [VOLATILE.sub(lambda m: m.group(1) or "<tmp>", x.rstrip()) for x in lines]


def main() -> int:
    readme = Path(next((a for a in sys.argv[1:] if not a.startswith("-")), ROOT / "README.md"))
    env = {**os.environ, "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}", "COLUMNS": "100"}
    differ = 0
    with tempfile.TemporaryDirectory() as work:
        for block in BLOCK.findall(readme.read_text()):
            for cmd, expected in commands(block):
                if cmd.startswith("source "):
                    continue
                done = subprocess.run(
                    cmd, shell=True, cwd=work, env=env, capture_output=True, text=True
                )
                got = (done.stdout + done.stderr).splitlines()
                diff = list(difflib.unified_diff(normal(expected), normal(got), lineterm=""))
                status = "same" if not diff else "DIFFERS"
                print(f"[{status}] $ {cmd} (exit {done.returncode})")
                if diff:
                    differ += 1
                    print("\n".join(diff[2:]))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
