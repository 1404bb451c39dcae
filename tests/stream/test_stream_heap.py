"""glibc heap thresholds for streamed runs (compress/stream/heap.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from compress.stream import heap

GLIBC = heap._libc() is not None


CHECK = """
import contextlib, sys, psutil, torch
from compress.stream import heap
rss = lambda: psutil.Process().memory_info().rss
inside = heap.large_frees_returned() if sys.argv[1] == "set" else contextlib.nullcontext()
with inside:
    torch.ones(30 << 18)  # 30 MiB, freed at once: glibc's moving threshold rises past 16 MiB
    before = rss()
    t = torch.ones(4 << 20)  # 16 MiB, every page touched
    grown = rss() - before
    del t
    shrunk = before + grown - rss()
print(grown >> 20, shrunk >> 20)
"""


def _grown_and_shrunk(mode: str) -> tuple[int, int]:
    args = [sys.executable, "-c", CHECK, mode]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    grown, shrunk = map(int, out.split())
    return grown, shrunk


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_a_freed_large_block_goes_back_to_the_os_inside():
    """In a fresh process (a long-lived one first reuses any free heap chunk large enough, as
    glibc always does): with glibc's defaults a freed 16 MiB block stays in the process once
    its moving threshold has risen; with the setting it is unmapped when freed."""
    grown, shrunk = _grown_and_shrunk("default")
    assert grown >= 15 and shrunk < 8, (grown, shrunk)
    grown, shrunk = _grown_and_shrunk("set")
    assert grown >= 15 and shrunk >= 15, (grown, shrunk)


def test_thresholds_are_restored_afterwards(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "set_thresholds", lambda m, t: calls.append((m, t)) or True)
    with heap.large_frees_returned(1 << 20) as applied:
        assert applied and calls == [(1 << 20, 1 << 20)]
    assert calls[-1] == (heap.DEFAULT_MMAP_THRESHOLD_MAX, heap.DEFAULT_TRIM_THRESHOLD)


def test_restored_even_when_the_run_fails(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "set_thresholds", lambda m, t: calls.append((m, t)) or True)
    with pytest.raises(RuntimeError), heap.large_frees_returned():
        raise RuntimeError("stage failed")
    assert calls[-1] == (heap.DEFAULT_MMAP_THRESHOLD_MAX, heap.DEFAULT_TRIM_THRESHOLD)


def test_without_glibc_nothing_changes(monkeypatch):
    monkeypatch.setattr(heap, "_libc", lambda: None)
    assert heap.set_thresholds(1 << 20, 1 << 20) is False
    with heap.large_frees_returned() as applied:
        assert applied is False
    heap.trim_heap()  # no error
