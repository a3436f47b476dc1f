"""``make_gated_agent``: a FAKE agent for CLI tests, loaded through a ``py:`` agent spec.

It is ``ScriptedAgent`` of test_runner (answers the image's folder name, never looks at it),
held at a gate: each call logs ``<name> <sha256> waiting`` and answers only once the gate file
exists, so a test can keep a real ``trustorch run`` busy for as long as it needs, without timing.
This module imports nothing from the tests at import time: the run loads it from its path.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

HERE = Path(__file__).resolve()


def make_gated_agent(name: str = "gated", log: str = "", gate: str = "") -> object:
    """FAKE agent (see the module docstring)."""
    sys.path.insert(0, str(HERE.parent))
    from test_runner import ScriptedAgent

    class GatedAgent(ScriptedAgent):
        async def predict(self, image, task, **kw):  # type: ignore[no-untyped-def]
            with Path(log).open("a") as fh:
                fh.write(f"{self.name} {image.sha256} waiting\n")
            while not Path(gate).exists():
                await asyncio.sleep(0.02)
            return await super().predict(image, task, **kw)

    return GatedAgent(name)


def gated_spec(name: str, log: Path, gate: Path) -> str:
    """The ``py:`` spec of a gated agent called ``name``."""
    return f"py:{HERE}:make_gated_agent?name={name}&log={log}&gate={gate}"
