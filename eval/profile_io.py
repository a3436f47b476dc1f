"""Trust profile files: one JSON object ``{format, version, profiles: {agent: profile}}``, read
and checked whole against the schema of ``eval.profile_schema``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from core.errors import InputError
from core.files import write_text_atomically
from core.jsonio import dumps_json, read_json_file
from core.validation import field_path, first_error

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
    write_text_atomically(path, dumps_json(payload, indent=2) + "\n", what="the trust profiles")


def profile_error(loc: list[Any], message: str) -> str:
    """One line naming the profile and the field of a schema error at ``loc``."""
    if len(loc) >= 2 and loc[0] == "profiles":
        name, rest = loc[1], loc[2:]
        where = f", field {field_path(rest)!r}" if rest else ""
        return f"profile {name!r}{where}: {message}"
    return f"field {field_path(loc)!r}: {message}" if loc else message


def load_trust_profiles(path: str | Path) -> dict[str, TrustProfile]:
    """Read a file written by ``save_trust_profiles``, checked whole against its schema; an
    InputError naming the file, the profile and the field when anything in it is unusable."""
    from eval.profile_schema import TrustProfileFile

    p = Path(path)
    if not p.is_file():
        raise InputError("no such trust profile file", path=str(p))
    data = read_json_file(p, what="trust profile file")
    if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
        raise InputError(f"not a trust profile file (expected format {FILE_FORMAT!r})", path=str(p))
    try:
        stored = TrustProfileFile.model_validate(data)
    except ValidationError as e:
        loc, message = first_error(e, tagged={"recalibration"})
        raise InputError(profile_error(loc, message), path=str(p)) from None
    return {name: profile.to_profile() for name, profile in stored.profiles.items()}
