"""Trust profile files: one JSON object ``{format, version, profiles: {agent: profile}}``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from core.errors import InputError
from core.files import write_text_atomically
from core.jsonio import read_json_file

if TYPE_CHECKING:
    from eval.profile import TrustProfile

FILE_FORMAT = "trustorch-trust-profiles"
FILE_VERSION = 1


def save_trust_profiles(path: str | Path, profiles: Mapping[str, TrustProfile]) -> None:
    """Write profiles as one JSON file, whole (``core.files``)."""
    payload = {
        "format": FILE_FORMAT,
        "version": FILE_VERSION,
        "profiles": {name: p.model_dump(mode="json") for name, p in profiles.items()},
    }
    write_text_atomically(path, json.dumps(payload, indent=2) + "\n", what="the trust profiles")


def load_trust_profiles(path: str | Path) -> dict[str, TrustProfile]:
    """Read a file written by ``save_trust_profiles`` (InputError naming the file if bad)."""
    from eval.profile import TrustProfile

    p = Path(path)
    if not p.is_file():
        raise InputError("no such trust profile file", path=str(p))
    data = read_json_file(p, what="trust profile file")
    if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
        raise InputError(f"not a trust profile file (expected format {FILE_FORMAT!r})", path=str(p))
    raw = data.get("profiles")
    if not isinstance(raw, dict):
        raise InputError("'profiles' must be an object agent -> profile", path=str(p))
    out: dict[str, TrustProfile] = {}
    for name, body in raw.items():
        try:
            profile = TrustProfile.model_validate(body)
            profile.recalibrator  # noqa: B018 - validates the stored map
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in ("profiles", name, *first["loc"]))
            raise InputError(first["msg"], path=str(p), field=where) from None
        except ValueError as e:
            raise InputError(str(e), path=str(p), field=f"profiles.{name}.recalibration") from None
        out[str(name)] = profile
    return out
