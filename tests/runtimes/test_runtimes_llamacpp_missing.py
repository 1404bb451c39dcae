"""Where llama-cpp-python is absent (or hidden), the llama.cpp runtime is a clear exit 2 with
the install command, not a crash. Runs everywhere."""

from __future__ import annotations

import sys

import pytest

from compress.errors import BadInput
from compress.runtimes import llamacpp as rt


def test_a_missing_llamacpp_is_exit_2_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if not installed
    with pytest.raises(BadInput, match="llama-cpp-python") as e:
        rt.import_llama()
    assert e.value.exit_code == 2 and "GGML_NATIVE=OFF" in str(e.value)
    assert not rt.available()


def test_the_stage_refuses_before_doing_any_work(monkeypatch):
    from compress.methods import llamacpp, run_stage
    from compress.testing import tiny_handle

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    h = tiny_handle()
    with pytest.raises(BadInput, match="pip install"):
        run_stage(h, llamacpp.LlamaCppConfig())
    assert h.runtime == "torch"
