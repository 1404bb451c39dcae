"""Checks on a model between pipeline steps.

`check_finite_output(handle, stage=...)` runs one short forward pass (8 token ids) and raises
`ReleaseFailed` (exit 1) naming the stage when the output holds NaN or inf: a stage that
breaks the model numerically is a failed release, caught right after the stage that did it.
"""

from __future__ import annotations

import logging
from typing import Any

from compress.errors import ReleaseFailed
from compress.handle import ModelHandle

log = logging.getLogger(__name__)

PROBE_TEXT = "The quick brown fox jumps over the lazy dog. It was a fine day."
PROBE_TOKENS = 8


def probe_ids(tokenizer: Any, vocab_size: int | None = None, n: int = PROBE_TOKENS) -> list[int]:
    """`n` token ids: the tokenizer's ids of a fixed short text, or 0..n-1 without one
    (ids kept below `vocab_size` when it is known)."""
    ids: list[int] = []
    if tokenizer is not None:
        try:
            ids = [int(i) for i in tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]]
        except Exception as e:  # noqa: BLE001 - a tokenizer quirk must not stop the check
            log.debug("probe: tokenizer failed (%s); using ids 0..%d", e, n - 1)
    ids = (ids * n)[:n] if ids else list(range(n))
    return [i % vocab_size for i in ids] if vocab_size else ids


def _vocab_size(model: Any) -> int | None:
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if isinstance(size, int) and size > 0 else None


def _output_tensor(out: Any) -> Any:
    """The logits (causal LM) or hidden states (encoder) of a forward's output, or None."""
    for name in ("logits", "last_hidden_state"):
        t = getattr(out, name, None)
        if t is not None:
            return t
    if isinstance(out, tuple | list) and out:
        return out[0]
    return out if hasattr(out, "isfinite") else None


def probe_output(handle: ModelHandle) -> Any:
    """One forward pass of `handle.model` on `probe_ids`; returns its output tensor (or None
    when the output has none). Works for torch models and the ONNX Runtime wrapper alike."""
    import torch

    model = handle.model
    ids = torch.tensor([probe_ids(handle.tokenizer, _vocab_size(model))], dtype=torch.long)
    ids = ids.to(handle.device)
    kwargs: dict[str, Any] = {"input_ids": ids}
    if handle.source.architecture == "causal_lm":
        kwargs["use_cache"] = False
    with torch.inference_mode():
        return _output_tensor(model(**kwargs))


def check_finite_output(handle: ModelHandle, *, stage: str) -> None:
    """Raise `ReleaseFailed` (exit 1) naming `stage` if a short forward pass of the model
    gives NaN or inf."""
    import torch

    out = probe_output(handle)
    if out is None:
        log.debug("%s: the model's output has no tensor to check; skipped", stage)
        return
    out = out.detach().float()
    finite = torch.isfinite(out)
    if bool(finite.all()):
        return
    n_nan = int(torch.isnan(out).sum())
    n_inf = int(torch.isinf(out).sum())
    raise ReleaseFailed(
        f"the model's output after this stage is not finite: {n_nan} NaN and {n_inf} inf "
        f"of {out.numel()} values on a {PROBE_TOKENS}-token probe. A model that outputs "
        "NaN/inf cannot be released.",
        fix="Check the stage's settings (bits, group_size, calibration) or ignore the layers "
        "it breaks.",
        stage=stage,
    )
