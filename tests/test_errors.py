"""compress.errors: one exit code per meaning, the stage named, what failure.json records."""

from __future__ import annotations

import signal

import pytest

from compress import errors
from compress.errors import (
    EXIT_BAD_INPUT,
    EXIT_GATE_FAILED,
    EXIT_INTERNAL,
    BadInput,
    CompressError,
    InternalFailure,
    Interrupted,
    ReleaseFailed,
    StageFailed,
    exit_code_for,
    failure_fields,
    from_worker_error,
    stage_errors,
)


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (BadInput("x"), 2),
        (ReleaseFailed("x"), 1),
        (InternalFailure("x"), 4),
        (StageFailed("x"), 4),
        (RuntimeError("x"), 4),
        (KeyboardInterrupt(), 130),
        (Interrupted(signal.SIGINT), 130),
        (Interrupted(signal.SIGTERM), 143),
    ],
)
def test_exit_code_for(err, code):
    assert exit_code_for(err) == code


def test_constants_and_hierarchy():
    assert (EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL) == (1, 2, 4)
    assert (errors.EXIT_SIGINT, errors.EXIT_SIGTERM) == (130, 143)
    assert issubclass(StageFailed, InternalFailure) and issubclass(InternalFailure, CompressError)
    assert not issubclass(StageFailed, BadInput) and not issubclass(ReleaseFailed, BadInput)
    assert isinstance(Interrupted(signal.SIGTERM), KeyboardInterrupt)  # the Ctrl-C path


def test_message_names_the_stage_once_attached():
    e = StageFailed("RuntimeError: boom", fix="Run with --debug.")
    assert str(e) == "RuntimeError: boom Run with --debug."
    assert e.in_stage("compress: stages.1 (gptq)") is e
    assert (
        str(e) == "stage 'compress: stages.1 (gptq)' failed: RuntimeError: boom Run with --debug."
    )
    e.in_stage("other")  # the first stage named wins
    assert e.stage == "compress: stages.1 (gptq)"
    assert str(BadInput("bad bits", stage="s")) == "stage 's': bad bits"
    assert str(ReleaseFailed("NaN", stage="s")) == "release failed at stage 's': NaN"


def test_stage_errors_wraps_crashes_and_keeps_user_errors():
    with pytest.raises(StageFailed) as ei, stage_errors("compress: stages.0 (rtn)"):
        raise RuntimeError("boom")
    assert ei.value.stage == "compress: stages.0 (rtn)" and ei.value.exit_code == 4
    assert isinstance(ei.value.__cause__, RuntimeError)
    assert "stage 'compress: stages.0 (rtn)' failed: RuntimeError: boom" in str(ei.value)

    with pytest.raises(BadInput) as ei, stage_errors("compress: stages.0 (rtn)"):
        raise BadInput("group_size 256 does not divide 64")
    assert ei.value.exit_code == 2 and ei.value.stage == "compress: stages.0 (rtn)"

    with pytest.raises(ReleaseFailed) as ei, stage_errors("s"):
        raise ReleaseFailed("NaN")
    assert ei.value.exit_code == 1 and ei.value.stage == "s"

    with pytest.raises(Interrupted), stage_errors("s"):  # interruptions pass through untouched
        raise Interrupted(signal.SIGTERM)


def test_failure_fields():
    f = failure_fields(StageFailed("RuntimeError: boom", stage="profile"))
    assert f == {
        "error": "StageFailed: stage 'profile' failed: RuntimeError: boom",
        "exit_code": 4,
        "stage": "profile",
    }
    assert failure_fields(ValueError("x")) == {
        "error": "ValueError: x",
        "exit_code": 4,
        "stage": None,
    }
    f = failure_fields(Interrupted(signal.SIGTERM))
    assert (f["exit_code"], f["signal"], f["stage"]) == (143, "SIGTERM", None)
    f = failure_fields(KeyboardInterrupt())
    assert (f["exit_code"], f["signal"]) == (130, "SIGINT")


@pytest.mark.parametrize(
    ("error", "cls", "code"),
    [
        ({"type": "BadInput", "fix": "Fix it.", "user_error": True}, BadInput, 2),
        ({"type": "SomethingElse", "user_error": True}, BadInput, 2),
        ({"type": "StageFailed", "user_error": True}, StageFailed, 4),
        ({"type": "RuntimeError", "user_error": False}, StageFailed, 4),
        ({}, StageFailed, 4),  # no reply at all: the worker died
    ],
)
def test_from_worker_error(error, cls, code):
    e = from_worker_error(error, "Profiling 'm' failed in the worker process.", stage="profile")
    assert type(e) is cls and e.exit_code == code and e.stage == "profile"
    assert e.fix == error.get("fix")
