"""glibc heap thresholds for streamed runs (compress/stream/heap.py)."""

from __future__ import annotations

import psutil
import pytest
import torch

from compress.stream import heap

GLIBC = heap._libc() is not None


def rss() -> int:
    return psutil.Process().memory_info().rss


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_a_freed_large_block_goes_back_to_the_os_inside():
    with heap.large_frees_returned() as applied:
        assert applied
        before = rss()
        t = torch.ones(4 << 20)  # 16 MiB, every page touched
        grown = rss() - before
        del t
        shrunk = before + grown - rss()
    assert grown >= 15 << 20
    assert shrunk >= 15 << 20  # mapped on its own, unmapped when freed


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
