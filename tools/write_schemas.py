"""Write the JSON Schemas of the files users write or edit to ``docs/schemas/``.

    python tools/write_schemas.py

``tests/test_schemas_docs.py`` checks that the committed files equal what this writes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def schemas() -> dict[str, Callable[[], dict[str, Any]]]:
    from core.task import Task
    from eval.profile_schema import trust_profile_file_schema
    from orchestrator.policies.policy_file import policy_file_schema

    return {
        "task.schema.json": Task.model_json_schema,
        "trust-profiles.schema.json": trust_profile_file_schema,
        "policy.schema.json": policy_file_schema,
    }


def rendered(build: Callable[[], dict[str, Any]]) -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    folder = ROOT / "docs" / "schemas"
    folder.mkdir(parents=True, exist_ok=True)
    for name, build in schemas().items():
        (folder / name).write_text(rendered(build))
        print(f"wrote {folder / name}")


if __name__ == "__main__":
    main()
