"""The errors library code raises where a run cannot go on. Library code never exits; a command line turns these
into a one-line message and exit status 1 (``cca.cli.exits_on_errors``)."""
from __future__ import annotations


class CCAError(Exception):
    """Base of the errors a command line prints as one line; the message names the flag or file at fault."""


class UsageError(CCAError, ValueError):
    """Bad input: a flag value, a file, a folder or a data set that is not what was expected."""


class TrainingError(CCAError, RuntimeError):
    """A run that cannot go on, e.g. too many consecutive non-finite steps."""
