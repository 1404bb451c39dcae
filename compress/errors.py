"""Errors a user can fix. The CLI prints them as one paragraph and exits with their code."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INCONCLUSIVE = 3


class CompressError(Exception):
    """Base class: `str(err)` is the message a user reads; `exit_code` what the CLI returns."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, fix: str | None = None):
        self.message = message
        self.fix = fix
        super().__init__(message if not fix else f"{message} {fix}")


class BadInput(CompressError):
    """The recipe, a path, a model name or a data file is wrong (exit 2)."""


class StageFailed(CompressError):
    """A compression stage could not run or produced a broken model (exit 2, run marked failed)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for a near miss, else ''."""
    match = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""
