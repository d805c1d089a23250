"""The root of every error the product explains in one line.

A `RealsrError` is a refusal or a failure the user can act on (a setting, an input, a folder, a
weight file): the command line prints `error: <its line>` and exits with its `exit_code`. Any
other exception is a bug and keeps its traceback. Each subclass keeps the builtin base that
callers already catch (`ValueError`, `FileNotFoundError`, ...), so `except ValueError` around a
parse or a Dask worker's `BadImageError` still holds. It lives on the lowest floor so that every
floor can raise one.
"""

from __future__ import annotations


class RealsrError(Exception):
    """An error said in one line, with the exit code of the command it ends (flows/exit_codes.py)."""

    exit_code: int = 2  # nothing was done: refused before work, or no item could be

    @property
    def line(self) -> str:
        """What the command line prints after `error: `."""
        return str(self)


class InputError(RealsrError, ValueError):
    """A setting, path or file refused, where no more specific error names the kind."""
