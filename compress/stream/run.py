"""The pipeline's side of a layer-by-layer run (`compress apply --max-memory` when the model
does not fit): the baseline and every variant as streamed skeletons, each variant saved block by
block and scored from its saved folder (reloaded, as a user would), no timing."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

from compress.handle import ModelHandle, ModelSource

NO_TIMING = (
    "not timed: a streamed run reads each layer from disk on every forward, so a timing would "
    "measure the disk; timing needs a device that holds the whole model"
)


def load_base(source: ModelSource, folder: str | Path) -> ModelHandle:
    """The baseline (float32) with its blocks on disk in `folder`."""
    from transformers import AutoTokenizer

    from compress.stream.model import StreamedModel

    sm = StreamedModel.open(folder, dtype="float32")
    return ModelHandle(
        model=sm.model,
        tokenizer=AutoTokenizer.from_pretrained(folder),
        source=source,
        dtype="float32",
        device="cpu",
    )


def new_variant(base: ModelHandle, scratch: Path) -> Any:
    """A variant's copy of the baseline: a second skeleton over the same files, rewritten
    layers committed under `scratch`."""
    from compress.stream.model import of

    return of(base.model).variant(scratch).model


def save_and_reload(comp: ModelHandle, out_dir: Path) -> Path:
    """Save the variant block by block, then point its handle at the saved folder, so what is
    scored is what was written."""
    from compress.stream.model import StreamedModel, of
    from compress.stream.save import save

    saved = save(of(comp.model), comp, out_dir)
    comp.model = StreamedModel.open_compressed(saved).model
    return saved


def peak_rss_bytes() -> int:
    """This process's peak resident set so far (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _peak_step(mem: dict) -> str:
    """', reached in STEP': the first step after which the peak so far was the run's peak."""
    after = mem.get("peak_rss_after_step_bytes") or {}
    top = max(after.values(), default=None)
    step = next((k for k, v in after.items() if v == top), None)
    return f", reached in the {step} step" if step else ""


def memory_notes(run: dict) -> list[str]:
    """The report's lines on the memory cap: estimate, measured peak, what streamed."""
    from compress.stream.budget import gib

    mem = run.get("memory")
    if not mem:
        return []
    est = mem["estimate_streamed_bytes" if mem["mode"] == "stream" else "estimate_in_memory_bytes"]
    peak = mem.get("peak_rss_bytes")
    cap = f"--max-memory {gib(mem['cap_bytes'])}" if mem["cap_bytes"] else "--stream"
    line = (
        f"{cap}: ran "
        + ("layer by layer from disk" if mem["mode"] == "stream" else "in memory")
        + f"; estimated peak {gib(est)}"
        + (f", measured peak RSS {gib(peak)}" if peak else "")
        + (" (OVER the cap)" if peak and mem["cap_bytes"] and peak > mem["cap_bytes"] else "")
        + _peak_step(mem)
        + "."
    )
    out = [line]
    if mem["mode"] == "stream":
        out.append(
            "Streamed: each decoder layer was loaded from disk, calibrated and written before "
            "the next; evaluation read one block at a time; the compressed model was scored "
            "from its saved folder. Speed was " + NO_TIMING + "."
        )
    return out
