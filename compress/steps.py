"""The steps of a run, in order: load -> compress -> evaluate -> profile (then `verdict`).

Each step is a function of the `RunState` it reads and extends, so the pipeline reads like
the diagram and a step can be moved elsewhere (profiling already runs its models in fresh
processes through `compress.profile.paired`'s runner; sweeps may dispatch variants) without
touching the others.
"""

from __future__ import annotations

import copy
import gc
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.checks import check_finite_output
from compress.data import token_windows
from compress.errors import stage_errors
from compress.handle import ModelHandle, ModelSource
from compress.recipe import Recipe

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """What a run knows so far. Set up by `pipeline.apply`; each step fills its part."""

    recipe: Recipe
    recipe_text: str
    run: dict[str, Any]  # id, folder, start, argv, status: the report's `run` block
    run_dir: Path
    device: str
    quick: bool
    source: ModelSource
    text: Any  # the WikiText-2 test text (None when eval.wikitext2 is off)
    progress: bool
    data_dir: str | None
    t0: float = field(default_factory=time.perf_counter)
    base: ModelHandle | None = None
    comp: ModelHandle | None = None
    windows: Any = None  # token windows [n, seq_len] for perplexity and KLD
    data: list[dict] = field(default_factory=list)  # provenance of every data set used
    model_dir: Path | None = None
    policy: dict | None = None  # execution paths chosen on this host
    base_ms: list[dict] = field(default_factory=list)
    comp_ms: list[dict] = field(default_factory=list)
    paired: dict = field(default_factory=dict)  # metric -> paired samples / stats.Paired
    contexts: dict[str, dict] = field(default_factory=dict)
    comp_runtime: str | None = None


def load(st: RunState) -> None:
    """The baseline (float32) and its copy to compress; the eval windows, tokenized once."""
    import torch

    from compress import models

    log.info("loading baseline %s", st.recipe.model)
    st.base = models.load(
        st.source, dtype="float32", device=st.device, trust_remote_code=st.recipe.trust_remote_code
    )
    ev = st.recipe.eval
    if st.text is not None:
        seq_len = ev.wikitext2.seq_len or min(2048, st.base.max_positions or 2048)
        max_w = ev.wikitext2.quick_windows if st.quick else ev.wikitext2.max_windows
        st.windows, n_tokens, ids_sha = token_windows(
            st.base.tokenizer, st.text.text, seq_len, max_w
        )
        st.data.append(
            dict(
                st.text.describe(),
                tokens_total=n_tokens,
                seq_len=seq_len,
                windows=int(st.windows.shape[0]),
                token_ids_sha256=ids_sha,
            )
        )
    torch.manual_seed(st.recipe.seed)
    st.comp = ModelHandle(
        model=copy.deepcopy(st.base.model),
        tokenizer=st.base.tokenizer,
        source=st.base.source,
        dtype=st.base.dtype,
        device=st.device,
    )


def compress(st: RunState) -> None:
    """The recipe's stages through the stage contract (records in `comp.stages`, weight bytes
    around each stage measured here, not claimed); the artifact saved; host kernels chosen."""
    from compress.methods import METHODS, StageContext, needs_calibration
    from compress.methods.calibrate import load_calibration
    from compress.profile.memory import weight_bytes
    from compress.quant.serialize import save_compressed

    recipe, base, comp = st.recipe, st.base, st.comp
    held: dict = {}

    def calibration():  # loaded once, on first use by a stage that needs it
        if "set" not in held:
            held["set"] = load_calibration(base.tokenizer, recipe.calibration, st.data_dir)
            st.data.append(held["set"].provenance)
        return held["set"]

    needed = any(needs_calibration(s) for s in recipe.stages)
    ctx = StageContext(
        model=comp,
        baseline=base,
        device=st.device,
        seed=recipe.seed,
        scratch_dir=st.run_dir / ".scratch",
        calibration_loader=calibration if needed else None,
    )
    before = weight_bytes(comp.model)
    for i, stage in enumerate(recipe.stages):
        log.info("stage %d: %s", i, stage.method)
        name = f"compress: stages.{i} ({stage.method})"
        with stage_errors(name):  # a crash: exit 4 naming the stage; BadInput stays 2
            record = METHODS[stage.method].apply(ctx, stage)
            check_finite_output(comp, stage=name)  # NaN/inf output: exit 1 naming the stage
        after = weight_bytes(comp.model)
        record = record.measured(before, after)
        before = after
        config = stage.model_dump(mode="json")
        comp.stages.append(record.model_copy(update={"config": config}).model_dump(mode="json"))
    shutil.rmtree(st.run_dir / ".scratch", ignore_errors=True)
    st.model_dir = save_compressed(comp, st.run_dir / "model")
    st.policy = _kernel_policy(comp, recipe.profile, st.device)


def evaluate(st: RunState) -> None:
    """Weight bytes of both models; perplexity and KLD on the same windows, paired."""
    from compress.evaluate.perplexity import evaluate_perplexity
    from compress.profile.memory import weight_bytes

    how = "parameters and buffers as held in memory, shared storage once"
    st.base_ms.append(exact("weights.bytes", weight_bytes(st.base.model), "bytes", how))
    st.comp_ms.append(exact("weights.bytes", weight_bytes(st.comp.model), "bytes", how))
    if st.windows is None:
        return
    ev = st.recipe.eval
    res = evaluate_perplexity(
        st.base.model,
        st.comp.model,
        st.windows,
        device=st.device,
        kld=ev.kld is not None and ev.kld.enabled,
        progress=st.progress,
    )
    st.base_ms += res["baseline"]
    st.comp_ms += res["compressed"]
    pw = res["per_window"]
    st.paired.update(
        {
            "wikitext2.perplexity": (pw["nll_base"], pw["nll_comp"]),
            "wikitext2.nll": (pw["nll_base"], pw["nll_comp"]),
        }
    )


def profile(st: RunState) -> None:
    """Free the in-process models, then time both in interleaved fresh processes."""
    from compress.profile.memory import dir_bytes
    from compress.profile.paired import Arm, profile_paired

    recipe, comp = st.recipe, st.comp
    st.comp_runtime = getattr(comp.model, "runtime", None) if comp.runtime != "torch" else None
    timing_copy = _baseline_for_timing(st.base, st.run_dir) if recipe.profile.enabled else None
    del st.base.model, comp.model
    gc.collect()
    if recipe.profile.enabled:
        arms = [
            Arm("baseline", str(timing_copy or recipe.model), "float32"),
            Arm("compressed", str(st.model_dir), comp.dtype, st.policy),
        ]
        try:
            with stage_errors("profile"):
                prof = profile_paired(
                    arms, recipe.profile, quick=st.quick, device=st.device, seed=recipe.seed
                )
        finally:
            if timing_copy is not None:
                shutil.rmtree(timing_copy, ignore_errors=True)
        for label, ms in (("baseline", st.base_ms), ("compressed", st.comp_ms)):
            ms += [m for m in prof["measurements"][label] if m["name"] != "weights.bytes"]
            st.contexts[label] = dict(prof["context"][label], timing_protocol=prof["protocol"])
        if timing_copy is not None:
            st.contexts["baseline"]["timed_from"] = (
                f"an fp32 safetensors copy of the loaded baseline (identical tensors), saved "
                f"once so each timing process loads it directly instead of converting "
                f"'{recipe.model}' again; deleted after profiling"
            )
        st.paired.update(prof["paired"]["compressed"])
    kind = st.base.source.kind
    src = f"size of the source weights file ({kind})"
    st.base_ms.append(exact("disk.artifact_bytes", st.base.source.file_bytes, "bytes", src))
    saved = "size of the saved compressed model folder"
    st.comp_ms.append(exact("disk.artifact_bytes", dir_bytes(st.model_dir), "bytes", saved))


def exact(name: str, value, unit: str, method: str) -> dict:
    from compress import stats

    if value is None:
        return stats.unavailable(name, unit, False, "size unknown for this source", method)
    return stats.exact(name, value, unit, False, method)


def _baseline_for_timing(base: ModelHandle, run_dir: Path) -> Path | None:
    """An fp32 safetensors copy of a causal-LM baseline for the timing processes (a GGUF
    is dequantized anew by every load: ~20 s per process on 2 cores)."""
    from compress.quant.serialize import save_compressed

    if base.source.architecture != "causal_lm" or base.runtime != "torch":
        return None
    return save_compressed(base, run_dir / ".baseline-fp32")


def _kernel_policy(comp: ModelHandle, profile, device: str) -> dict | None:
    """Time the compressed model's execution paths on this host (torch runtime only)."""
    if comp.runtime != "torch":
        return None
    from compress.profile.kernels import choose_policy

    with stage_errors("kernel choice"):
        policy = choose_policy(
            comp.model,
            prompt_tokens=profile.prompt_tokens,
            batch_sizes=profile.batch_sizes,
            device=device,
        )
    return policy
