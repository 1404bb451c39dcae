"""`compress.steps` choices that change what gets measured."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from compress import steps
from compress.recipe import ProfileConfig


@pytest.mark.parametrize(
    ("cfg", "chosen"),
    [
        (ProfileConfig(enabled=False), False),  # nothing profiled: default paths, no timing
        (ProfileConfig(kernels="fixed"), False),
        (ProfileConfig(), True),
    ],
)
def test_kernel_paths_are_timed_only_for_a_profiled_auto_run(monkeypatch, cfg, chosen):
    import compress.profile.kernels as kernels

    calls = []
    monkeypatch.setattr(kernels, "choose_policy", lambda model, **kw: calls.append(kw) or {})
    comp = SimpleNamespace(runtime="torch", model=object())
    policy = steps._kernel_policy(comp, cfg, "cpu")
    assert (policy is not None) is chosen and bool(calls) is chosen
