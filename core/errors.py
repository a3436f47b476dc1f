"""The product's one root exception and its few meaningful subclasses.

The CLI maps every ``TrustorchError`` to one line on stderr and exit code 1; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class TrustorchError(Exception):
    """Root of every error the product raises on purpose."""


class InputError(TrustorchError):
    """Bad user input. Carries where it is: file, line (1-based, header = 1), field."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = str(self.path)
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        elif self.line is not None:
            where = f"line {self.line}: "
        column = f"column '{self.field}': " if self.field is not None else ""
        return f"{where}{column}{self.message}"


class NotFittedError(TrustorchError):
    """An estimator (a recalibration map, a vote rule, a policy) was used before ``fit``."""


def os_reason(error: OSError) -> str:
    """The short reason of an OS error (``strerror``), for a one-line message."""
    return error.strerror or type(error).__name__
