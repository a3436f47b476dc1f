"""Loading Hugging Face weights local-first: a folder or a cached snapshot without touching the
network; a hub id not found locally only once the hub answers (checked in seconds, not after
the hub client's minute of retries)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from agents.errors import ModelLoadError
from core.extras import missing_extra_error

Loaded = TypeVar("Loaded")
LOAD_ERRORS = (OSError, ValueError, KeyError)
"""What transformers raises for missing, partial or foreign model files."""


def local_weights_folder(name: str) -> Path | None:
    """``name`` itself when it is a folder, else its snapshot in the Hugging Face cache, else
    None. Never touches the network."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") != 1:
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    return Path(cached).parent if isinstance(cached, str) else None


def unreachable_hub(timeout_s: float = 3.0) -> str | None:
    """Why the model hub cannot be used right now, or None when it answers.

    Checked once before a download so that a machine without internet fails in seconds, not
    after the hub client's minute of retries."""
    import httpx
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        httpx.head(constants.ENDPOINT, timeout=timeout_s)
    except httpx.HTTPError as e:
        return f"{constants.ENDPOINT} cannot be reached ({type(e).__name__})"
    return None


def load_local_first(
    load: Callable[[bool], Loaded], name_or_path: str, *, what: str, hint: str
) -> Loaded:
    """``load(local_only)`` first with ``True``; for a hub id that is not cached, again with
    ``False`` when the hub can be reached. Every failure is a one-line ModelLoadError naming
    ``what`` (e.g. "CLIP") and ending with ``hint`` (how to pass a local folder); a missing
    optional package (torchvision for Qwen2.5-VL's processor) names the extra to install."""
    try:
        return _load_or_name_extra(load, True, what, name_or_path)
    except LOAD_ERRORS as local_error:
        if Path(name_or_path).expanduser().is_dir():
            raise _load_error(what, name_or_path, local_error, hint) from local_error
        hub = unreachable_hub()
        if hub is not None:
            raise ModelLoadError(
                f"no {what} weights for '{name_or_path}': not a local folder, not in the Hugging "
                f"Face cache, and {hub}; {hint}"
            ) from local_error
        try:
            return _load_or_name_extra(load, False, what, name_or_path)
        except LOAD_ERRORS as e:
            raise _load_error(what, name_or_path, e, hint) from e


def _load_or_name_extra(
    load: Callable[[bool], Loaded], local_only: bool, what: str, name_or_path: str
) -> Loaded:
    try:
        with quiet_transformers():
            return load(local_only)
    except ImportError as e:
        raise missing_extra_error(e, needed_by=f"{what} '{name_or_path}'") from e


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers without its progress bars ("Loading weights") and notices while a model
    loads: they would land in the middle of a command's own output. Errors still surface."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _load_error(what: str, name_or_path: str, error: Exception, hint: str) -> ModelLoadError:
    first = str(error).splitlines()[0][:160] if str(error) else ""
    return ModelLoadError(
        f"could not load {what} weights from '{name_or_path}' ({type(error).__name__}: {first}); "
        f"{hint}"
    )
