"""What every command line shares: its ``main`` turns the library's errors into a one-line exit."""
from __future__ import annotations

import functools
from typing import Callable, TypeVar

from cca.errors import CCAError

F = TypeVar("F", bound=Callable)


def exits_on_errors(main: F) -> F:
    """Decorate a CLI's ``main``: a ``CCAError`` (bad flag, file, data; a run that cannot go on) becomes
    ``SystemExit(message)``: the message on stderr as one line, exit status 1, no traceback."""
    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except CCAError as e:
            raise SystemExit(str(e)) from None
    return run
