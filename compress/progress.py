"""Progress bars that suit where they are read.

On a terminal: tqdm's live bar. Anywhere else (a CI log, a pipe, a file) a bar's frames would
pile up as hundreds of carriage-return updates, so each update is written as one plain line,
at most one every `COMPRESS_PROGRESS_INTERVAL` seconds (default 30) plus the last one. The mode
is chosen from stderr, or forced with `COMPRESS_PROGRESS_MODE=bar|lines` (the profiling worker
inherits its parent's mode this way, since its own stderr is always a pipe). `TQDM_DISABLE=1`
(what `--no-progress` sets) silences every bar, read at call time.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

MODE_ENV = "COMPRESS_PROGRESS_MODE"
INTERVAL_ENV = "COMPRESS_PROGRESS_INTERVAL"


def mode(stream: TextIO | None = None) -> str:
    """'bar' on a terminal, 'lines' elsewhere; the environment variable decides if set."""
    forced = os.environ.get(MODE_ENV, "").strip().lower()
    if forced in ("bar", "lines"):
        return forced
    stream = stream or sys.stderr
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):
        return "lines"


def disabled() -> bool:
    return os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes")


class LineWriter:
    """A file for tqdm that turns each redrawn frame into one line: carriage returns and
    cursor moves dropped, blank frames (a cleared bar) skipped, a newline per flush."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self._buf = ""
        self._last = ""

    def write(self, s: str) -> int:
        self._buf += s.replace("\x1b[A", "").replace("\r", "")
        return len(s)

    def flush(self) -> None:
        for part in self._buf.split("\n"):
            line = part.strip()
            if line and line != self._last:
                self.stream.write(line + "\n")
                self._last = line
        self._buf = ""
        self.stream.flush()


def interval() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, "30")))
    except ValueError:
        return 30.0


def tqdm(iterable: Any = None, **kwargs: Any):
    """`tqdm.auto.tqdm` on a terminal; throttled one-line-per-update tqdm elsewhere."""
    from tqdm import tqdm as plain
    from tqdm.auto import tqdm as auto

    if disabled():
        kwargs["disable"] = True
    if mode() == "bar":
        return auto(iterable, **kwargs)
    kwargs.setdefault("file", LineWriter(sys.stderr))
    kwargs.update(mininterval=interval(), maxinterval=max(interval(), 1.0), ascii=True)
    kwargs.update(dynamic_ncols=False, ncols=100, leave=True)
    return plain(iterable, **kwargs)
