from types import SimpleNamespace

import pytest


def _profile_cfg(**kw):
    """The recipe's ProfileConfig when importable, else the same fields as attributes (the
    recipe module depends on modules written in parallel)."""
    base = dict(prompt_tokens=16, new_tokens=4, warmup=1, repeats=3, quick_repeats=2)
    base.update(kw)
    try:
        from compress.recipe import ProfileConfig
    except ImportError:
        full = dict(batch_sizes=[1], threads=None, power_watts=None, enabled=True)
        full.update(base)
        return SimpleNamespace(**full)
    return ProfileConfig(**base)


@pytest.fixture(scope="session")
def profile_cfg():
    return _profile_cfg
