"""The JSON Schemas in docs/schemas/ are the ones the readers check files against."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_committed_schemas_are_current() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    from write_schemas import rendered, schemas

    for name, build in schemas().items():
        committed = (ROOT / "docs" / "schemas" / name).read_text()
        assert committed == rendered(build), f"docs/schemas/{name} is stale: tools/write_schemas.py"
