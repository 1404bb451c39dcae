"""The node's timing lock: compute is shared, timing is alone, a queued timing goes before
later compute, and nesting inside one process does not deadlock. Processes coordinate with
events; no assertion depends on how fast the host is."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from compress.profile import nodelock

ctx = mp.get_context("fork")
WAIT = 60  # seconds an event may take on a loaded host before the test calls it a hang


@pytest.fixture(autouse=True)
def lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_LOCK_DIR", str(tmp_path))
    return tmp_path


def _hold(kind: str, holding, release, log=None, tag: str = "") -> None:
    with getattr(nodelock, kind)():
        if log is not None:
            with open(log, "a") as f:
                f.write(tag + "\n")
        holding.set()
        release.wait(WAIT)


def _start(kind, log=None, tag=""):
    holding, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(kind, holding, release, log, tag))
    p.start()
    return p, holding, release


def test_two_computes_hold_the_lock_together():
    a = _start("compute")
    b = _start("compute")
    assert a[1].wait(WAIT) and b[1].wait(WAIT)  # both inside at once
    for p, _, release in (a, b):
        release.set()
        p.join(WAIT)
        assert p.exitcode == 0


def test_timing_waits_for_compute_and_compute_waits_for_timing():
    comp = _start("compute")
    assert comp[1].wait(WAIT)
    timing = _start("timing")
    assert not timing[1].wait(0.5)  # cannot get in while compute holds the node
    comp[2].set()
    assert timing[1].wait(WAIT)
    later = _start("compute")
    assert not later[1].wait(0.5)  # and compute cannot get in while it times
    timing[2].set()
    assert later[1].wait(WAIT)
    later[2].set()
    for p in (comp[0], timing[0], later[0]):
        p.join(WAIT)
        assert p.exitcode == 0


def test_a_queued_timing_goes_before_later_compute(tmp_path):
    log = tmp_path / "order.log"
    first = _start("compute", log, "compute-1")
    assert first[1].wait(WAIT)
    timing = _start("timing", log, "timing")
    _until_queued(tmp_path / "turnstile.lock")
    assert not timing[1].is_set()
    later = _start("compute", log, "compute-2")  # arrives after the timing queued
    assert not later[1].wait(0.5)
    first[2].set()
    assert timing[1].wait(WAIT)
    timing[2].set()
    assert later[1].wait(WAIT)
    later[2].set()
    for p in (first[0], timing[0], later[0]):
        p.join(WAIT)
    assert log.read_text().split() == ["compute-1", "timing", "compute-2"]


def _until_queued(turnstile) -> None:
    """Until some process holds the turnstile (a timing queued behind compute)."""
    import fcntl
    import time

    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if turnstile.exists():
            with open(turnstile) as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(f, fcntl.LOCK_UN)
                except BlockingIOError:
                    return
        time.sleep(0.05)
    raise AssertionError("the timing process never queued")


def test_nesting_in_one_process():
    with nodelock.timing(), nodelock.timing(), nodelock.compute():
        pass  # no-ops: the process already holds the node alone
    with nodelock.compute(), pytest.raises(RuntimeError, match="inside compute"):  # noqa: SIM117
        with nodelock.timing():
            pass
    with nodelock.timing():  # everything was released
        pass
