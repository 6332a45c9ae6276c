"""What every command line shares: its ``main`` turns the library's errors into a one-line exit."""
from __future__ import annotations

import functools
from typing import Callable, TypeVar

from cca import dist as cdist
from cca.cpu_memory import keep_freed_memory
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


def start_process(device: str | None = None) -> cdist.Dist:
    """A command line's process set-up: the process group (``cca.dist.init``) and, on the CPU, glibc keeping freed
    memory for the next op (``cca.cpu_memory``)."""
    dist = cdist.init(device)
    if dist.device.type == "cpu":
        keep_freed_memory()
    return dist


def finish_process(dist: cdist.Dist, text: str) -> None:
    """A command line's end: all ranks done, rank 0 says ``text``, the process group goes."""
    cdist.barrier()
    if dist.is_main:
        print(text, flush=True)
    cdist.cleanup()
