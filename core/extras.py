"""Optional packages and the extra of ``trust-orchestrator`` that installs each, so that a
missing one is a one-line error naming what to install, not an ImportError traceback."""

from __future__ import annotations

import re

from core.errors import TrustorchError

EXTRA_OF_PACKAGE = {
    "torchvision": ("qwen", "torchvision"),
    "gradio": ("demo", "gradio"),
    "llama_cpp": ("llm", "llama-cpp-python"),
    "ray": ("ray", "ray"),
}
"""Import name of an optional package -> (the extra that provides it, its name on PyPI)."""

_REQUIRES = re.compile(r"requires the (\S+) librar", re.IGNORECASE)


class MissingExtraError(TrustorchError):
    """An optional package a feature needs is not installed."""


def missing_package(error: ImportError) -> str | None:
    """The import name of the package ``error`` says is missing, when it names one.

    Covers a plain ``ModuleNotFoundError`` and transformers' "X requires the Torchvision
    library but it was not found" messages."""
    if error.name:
        return error.name.split(".")[0]
    match = _REQUIRES.search(str(error))
    return match.group(1).lower() if match else None


def missing_extra_error(error: ImportError, *, needed_by: str) -> MissingExtraError:
    """The one-line error for ``error``: which package is missing and how to install it."""
    package = missing_package(error)
    if package is None:
        first = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
        return MissingExtraError(f"{needed_by} needs a package that is not installed ({first})")
    if package in EXTRA_OF_PACKAGE:
        extra, pypi_name = EXTRA_OF_PACKAGE[package]
        install = f"pip install 'trust-orchestrator[{extra}]' (or: pip install {pypi_name})"
    else:
        install = f"pip install {package}"
    return MissingExtraError(f"{needed_by} needs {package}, which is not installed: {install}")
