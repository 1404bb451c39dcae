"""Shared fixtures. Unit tests run offline on tiny models built in code."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# eval results cached by tests never land in (or come from) the user's ~/.cache
os.environ.setdefault("COMPRESS_EVAL_CACHE", tempfile.mkdtemp(prefix="compress-eval-cache-"))

# Under pytest-xdist (README's test command: -n 2 on a 2-core host) each worker computes on one
# core, its subprocesses too: two workers of two threads each would oversubscribe the cores.
# No test asserts a speed, so this changes how long the suite takes, not what it checks.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("COMPRESS_DATA_DIR") or REPO.parent / "shared" / "data")


def pytest_collection_modifyitems(config, items):
    """Integration tests first; tests marked `gpu` run only where torch sees a CUDA device
    (skipped, and said so, else)."""
    import torch

    # The real-model files take minutes each: first in line, so that under xdist (--dist
    # loadfile hands whole files out in this order) they start at once and the quick files
    # fill the other workers, instead of one worker finishing them alone at the end.
    items.sort(key=lambda item: "integration" not in item.keywords)  # stable
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from compress.testing import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """A data folder laid out like ../shared/data, holding a small WikiText-like file."""
    from compress.testing import tiny_text_file

    root = tmp_path_factory.mktemp("data")
    tiny_text_file(root / "wikitext-2-raw" / "wiki.test.raw", repeats=60)
    return root


@pytest.fixture(scope="module")
def shared_data_module() -> Path:
    """`shared_data` for module-scoped fixtures."""
    if not (SHARED_DATA / "wikitext-2-raw").is_dir():
        pytest.skip(f"shared evaluation data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture()
def shared_data() -> Path:
    if not (SHARED_DATA / "wikitext-2-raw").is_dir():
        pytest.skip(f"shared evaluation data not found at {SHARED_DATA}")
    return SHARED_DATA
