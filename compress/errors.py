"""Errors the CLI turns into one paragraph and an exit code.

Exit codes (one meaning each):

    0  ok: all gates pass
    1  a gate failed, or the release failed (e.g. the compressed model outputs NaN/inf)
    2  bad input ONLY: the recipe, a path, a model name or a data file is wrong
    3  inconclusive: an interval straddles a gate's threshold
    4  internal failure: a stage or the profiling worker crashed (the stage is named)
    130 / 143  interrupted by SIGINT (Ctrl-C) / SIGTERM (a CI cancel)

Class tree::

    CompressError            message + fix + optional stage; exit_code per subclass
    +-- BadInput             2
    +-- ReleaseFailed        1
    +-- InternalFailure      4
        +-- StageFailed      4  a compression stage or the profiling worker failed
    Interrupted(KeyboardInterrupt)  130 (SIGINT) / 143 (SIGTERM)
"""

from __future__ import annotations

import difflib
import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INCONCLUSIVE = 3
EXIT_INTERNAL = 4
EXIT_SIGINT = 128 + signal.SIGINT  # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143


class CompressError(Exception):
    """Base class: `str(err)` is the message a user reads; `exit_code` what the CLI returns.

    `stage` names where it happened ("compress: stages.1 (gptq)", "profile", ...); it can be
    attached later with `in_stage` by the code that knows which stage was running.
    """

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, fix: str | None = None, stage: str | None = None):
        self.message = message
        self.fix = fix
        self.stage = stage
        super().__init__(message if not fix else f"{message} {fix}")

    def in_stage(self, stage: str) -> CompressError:
        """Name the stage this error came from, unless one is named already; returns self."""
        if self.stage is None:
            self.stage = stage
        return self

    def _stage_prefix(self) -> str:
        return f"stage '{self.stage}': " if self.stage else ""

    def __str__(self) -> str:
        text = self.message if not self.fix else f"{self.message} {self.fix}"
        return self._stage_prefix() + text


class BadInput(CompressError):
    """The recipe, a path, a model name or a data file is wrong (exit 2)."""


class ExportError(BadInput):
    """An export the chosen format cannot hold, or a place it cannot be written (exit 2)."""


class ReleaseFailed(CompressError):
    """The compressed model must not be released, e.g. its outputs are NaN/inf (exit 1)."""

    exit_code = EXIT_GATE_FAILED

    def _stage_prefix(self) -> str:
        return f"release failed at stage '{self.stage}': " if self.stage else "release failed: "


class InternalFailure(CompressError):
    """Something crashed that the user did not cause (exit 4); the run is marked failed."""

    exit_code = EXIT_INTERNAL

    def _stage_prefix(self) -> str:
        return f"stage '{self.stage}' failed: " if self.stage else ""


class StageFailed(InternalFailure):
    """A compression stage or the profiling worker crashed or broke the model (exit 4)."""


class Interrupted(KeyboardInterrupt):
    """A signal stopped the run; handled exactly like Ctrl-C. Exit code 128 + signal number."""

    def __init__(self, signum: int = signal.SIGINT):
        self.signum = int(signum)
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + self.signum
        super().__init__(f"interrupted by {self.signal_name}")


def exit_code_for(err: BaseException) -> int:
    """The exit code `err` ends the CLI with (anything unexpected is an internal failure)."""
    if isinstance(err, CompressError | Interrupted):
        return err.exit_code
    if isinstance(err, KeyboardInterrupt):
        return EXIT_SIGINT
    return EXIT_INTERNAL


def signal_name(err: BaseException) -> str | None:
    """'SIGINT' / 'SIGTERM' when `err` is an interruption, else None."""
    if isinstance(err, Interrupted):
        return err.signal_name
    return "SIGINT" if isinstance(err, KeyboardInterrupt) else None


def failure_fields(err: BaseException) -> dict[str, Any]:
    """What failure.json records about `err`: error text, exit code, stage, signal."""
    fields: dict[str, Any] = {
        "error": f"{type(err).__name__}: {err}",
        "exit_code": exit_code_for(err),
        "stage": getattr(err, "stage", None),
    }
    sig = signal_name(err)
    if sig:
        fields["signal"] = sig
    return fields


@contextmanager
def stage_errors(stage: str) -> Iterator[None]:
    """Run a stage: its `CompressError`s get `stage` attached (and keep their exit code);
    any other exception becomes a `StageFailed` (exit 4) naming the stage. Interruptions
    (KeyboardInterrupt, SystemExit) pass through untouched."""
    try:
        yield
    except CompressError as e:
        e.in_stage(stage)
        raise
    except Exception as e:
        raise StageFailed(
            f"{type(e).__name__}: {e}", stage=stage, fix="Run with --debug for the traceback."
        ) from e


def from_worker_error(error: dict[str, Any], message: str, *, stage: str) -> CompressError:
    """Rebuild the error a worker process reported (`{"type", "fix", "user_error"}`).

    A `CompressError` raised in the worker keeps its class's exit code (a `BadInput` stays
    exit 2); a crash (`user_error` false, or no reply at all) becomes `StageFailed` (exit 4).
    """
    cls: type[CompressError] = StageFailed
    if error.get("user_error"):
        found = _ERROR_CLASSES.get(str(error.get("type")))
        cls = found if found is not None else BadInput
    return cls(message, fix=error.get("fix") or None, stage=stage)


_ERROR_CLASSES: dict[str, type[CompressError]] = {
    c.__name__: c for c in (CompressError, BadInput, ReleaseFailed, InternalFailure, StageFailed)
}


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for a near miss, else ''."""
    match = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""
