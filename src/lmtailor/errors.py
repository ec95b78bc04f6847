"""lmtailor's exceptions: inner code raises these; the CLI prints one line, the API one error object."""

from __future__ import annotations


class LmtailorError(Exception):
    """A failure the user can act on. Its message is shown as is, without a traceback."""


class DataError(LmtailorError):
    """A problem with one row (or the whole) of a data file, located by file and 1-based line."""

    def __init__(self, path: str, line: int | None, reason: str):
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


class ModelError(LmtailorError):
    """A model name, folder or file that cannot be resolved or loaded."""


class SpecError(LmtailorError):
    """A job spec (YAML, flags or JSON body) that does not validate."""
