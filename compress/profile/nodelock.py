"""One timing at a time on a machine: a reader-writer lock shared by every compress process.

Timing is exclusive (`timing()`): while one process times models, no other compress process
on the node may time or compute, or each would slow the other and both numbers would be
wrong. Work that only needs to stay out of the way of timing (applying methods, evaluating:
`compute()`) shares the lock, so several sweep trials compute side by side and each timing
waits until they pause, then runs alone. A waiting timing goes first: new compute waits behind
it (a turnstile), so timings are not starved by a stream of trials.

`compress apply` always takes `timing()` around its profile; sweep trials also wrap their
other steps in `compute()`. The locks are `flock`s on files in $COMPRESS_LOCK_DIR (default: the
system temp folder), so they hold across processes and Ray workers on one node, and are freed
by the kernel when a process dies. Re-entrant within a process: a timing inside a timing, or
compute inside a timing, is a no-op. Where `fcntl` does not exist (Windows) they do nothing,
with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

_held = threading.local()  # .mode: None | "compute" | "timing"


def lock_dir() -> Path:
    d = Path(os.environ.get("COMPRESS_LOCK_DIR") or Path(tempfile.gettempdir()) / "compress-locks")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _open(name: str) -> int:
    return os.open(lock_dir() / name, os.O_RDWR | os.O_CREAT, 0o666)


def _acquire(fd: int, op: int, what: str) -> None:
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    log.info("waiting: another compress process on this node is %s", what)
    t0 = time.perf_counter()
    fcntl.flock(fd, op)
    log.info("waited %.1f s for the node's timing lock", time.perf_counter() - t0)


@contextlib.contextmanager
def timing() -> Iterator[None]:
    """Exclusive: no other compress process times or computes on this node meanwhile."""
    mode = getattr(_held, "mode", None)
    if mode == "timing" or fcntl is None:
        if fcntl is None:
            log.warning("no fcntl here: timings of concurrent compress processes may overlap")
        yield
        return
    if mode == "compute":
        raise RuntimeError("timing() inside compute(): leave the compute section first")
    gate, rw = _open("turnstile.lock"), _open("node.lock")
    try:
        _acquire(gate, fcntl.LOCK_EX, "queued to time models")
        _acquire(rw, fcntl.LOCK_EX, "computing or timing")
        _held.mode = "timing"
        yield
    finally:
        _held.mode = None
        os.close(rw)  # closing releases the flock
        os.close(gate)


@contextlib.contextmanager
def compute() -> Iterator[None]:
    """Shared with other compute; waits while any process times (or is queued to)."""
    if getattr(_held, "mode", None) is not None or fcntl is None:
        yield
        return
    gate, rw = _open("turnstile.lock"), _open("node.lock")
    try:
        try:
            _acquire(gate, fcntl.LOCK_EX, "timing models")
            _acquire(rw, fcntl.LOCK_SH, "timing models")
        finally:
            os.close(gate)  # the turnstile is only passed through
        _held.mode = "compute"
        yield
    finally:
        _held.mode = None
        os.close(rw)
