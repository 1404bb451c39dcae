"""glibc heap settings for a layer-by-layer run, whose peak is set by how much freed memory
the process keeps.

glibc serves allocations below its mmap threshold from its heap and keeps what is freed there
for reuse; the threshold rises with every large block freed (up to 32 MiB), so after the first
few layers a 7B layer's 16 MB row chunks, activations and statistics all come from a heap that
holds their freed predecessors too. Measured on a one-layer copy of the 7B-width benchmark
model (GPTQ, streamed): peak RSS 1.97-2.16 GiB across runs with glibc's defaults, 1.86 GiB
with a fixed 1 MiB threshold (blocks of 1 MiB and more are mapped on their own and handed back
to the OS when freed). Streamed runs are never timed, so the extra page faults cost nothing
that is reported. No-op off glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
#: blocks of this size and more are mapped separately and returned to the OS when freed
STREAMED_MMAP_THRESHOLD = 1 << 20
#: glibc's own upper bound for its moving threshold on 64-bit: restored afterwards
DEFAULT_MMAP_THRESHOLD_MAX = 32 << 20
DEFAULT_TRIM_THRESHOLD = 128 << 10


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, loaded once (trim_heap runs after every streamed block and group)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc keeps freed blocks under its mmap
    threshold, up to 32 MB each, in the process), so a streamed run's RSS falls back after
    each block instead of ratcheting up. No-op off glibc."""
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):
            libc.malloc_trim(0)


def set_thresholds(mmap: int, trim: int) -> bool:
    """Fix glibc's mmap and trim thresholds (bytes); False where that is not possible."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim))


@contextlib.contextmanager
def large_frees_returned(threshold: int = STREAMED_MMAP_THRESHOLD) -> Iterator[bool]:
    """Within: allocations of `threshold` bytes and more are mapped on their own, so freeing
    one returns it to the OS at once (see the module docstring). Yields whether the setting
    took. Afterwards the mmap threshold is glibc's 64-bit maximum, the value its moving
    threshold reaches once large blocks have been freed, and trimming is back to its default."""
    applied = set_thresholds(threshold, threshold)
    if not applied:
        log.debug("glibc mallopt unavailable: heap thresholds unchanged")
    try:
        yield applied
    finally:
        if applied:
            set_thresholds(DEFAULT_MMAP_THRESHOLD_MAX, DEFAULT_TRIM_THRESHOLD)
            trim_heap()
