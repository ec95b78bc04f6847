"""What every command of the `lmtailor` CLI shares: errors as one line (the cores a command was given:
models/loading.use_given_threads, which job processes and training ranks call too).

main.py, data.py and evaluate.py import this module and never each other's helpers (main.py imports their
commands to mount them), so the imports point one way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from lmtailor.errors import LmtailorError
from lmtailor.terminal import err, print_error


@contextmanager
def user_errors(debug: bool = False) -> Iterator[None]:
    """Our errors as one red line and exit code 1; `--debug` keeps the traceback. Anything else is a bug and
    keeps its traceback."""
    try:
        yield
    except LmtailorError as e:
        if debug:
            raise
        print_error(str(e))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err().print("[yellow]interrupted[/yellow]")
        raise typer.Exit(130) from None
