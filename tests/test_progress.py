"""Progress off a terminal: one plain line per throttled update, no carriage-return frames."""

from __future__ import annotations

import io

import pytest

from compress import progress


@pytest.fixture
def lines_mode(monkeypatch):
    monkeypatch.setenv(progress.MODE_ENV, "lines")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)


def test_mode_follows_the_stream_unless_forced(monkeypatch):
    monkeypatch.delenv(progress.MODE_ENV, raising=False)
    assert progress.mode(io.StringIO()) == "lines"

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert progress.mode(Tty()) == "bar"
    monkeypatch.setenv(progress.MODE_ENV, "bar")
    assert progress.mode(io.StringIO()) == "bar"


def test_a_throttled_bar_writes_few_whole_lines(lines_mode, monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "1000")
    buf = io.StringIO()
    for _ in progress.tqdm(range(500), desc="windows", file=progress.LineWriter(buf)):
        pass
    text = buf.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3, lines  # the start and the end, not 500 frames
    assert lines[-1].startswith("windows: 100%") and "500/500" in lines[-1]


def test_every_update_is_a_line_when_not_throttled(lines_mode, monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    buf = io.StringIO()
    bar = progress.tqdm(total=3, desc="layers", file=progress.LineWriter(buf))
    for _ in range(3):
        bar.update(1)
    bar.close()
    lines = buf.getvalue().splitlines()
    assert [ln.split("|")[0].strip() for ln in lines][-1] == "layers: 100%"
    assert len(lines) == len(set(lines))  # a repeated frame is written once


def test_tqdm_disable_silences_it(lines_mode, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    buf = io.StringIO()
    for _ in progress.tqdm(range(10), desc="x", file=progress.LineWriter(buf)):
        pass
    assert buf.getvalue() == ""


def test_a_cleared_bar_writes_no_blank_lines():
    buf = io.StringIO()
    w = progress.LineWriter(buf)
    w.write("\r" + " " * 40 + "\r")
    w.flush()
    w.write("\rstep 1/2\x1b[A")
    w.flush()
    assert buf.getvalue() == "step 1/2\n"


def test_cli_quiets_library_bars_off_a_terminal(monkeypatch):
    from compress import cli

    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_MININTERVAL"):
        monkeypatch.setenv(var, "placeholder")  # registered, so teardown restores the original
        monkeypatch.delenv(var)
    monkeypatch.setenv(progress.MODE_ENV, "lines")
    cli._quiet_library_bars()
    assert progress.os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert float(progress.os.environ["TQDM_MININTERVAL"]) == progress.interval()
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS")
    monkeypatch.setenv(progress.MODE_ENV, "bar")
    cli._quiet_library_bars()
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in progress.os.environ
