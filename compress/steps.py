"""The steps of a run, in order: load -> compress -> evaluate -> profile (then `verdict`).

Each step is a function of the `RunState` it reads and extends, so the pipeline reads like
the diagram and a step can be moved elsewhere (profiling already runs its models in fresh
processes through `compress.profile.paired`'s runner; sweeps may dispatch variants) without
touching the others.
"""

from __future__ import annotations

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
from compress.placement import copy_model
from compress.recipe import Recipe, Variant

log = logging.getLogger(__name__)


@dataclass
class VariantRun:
    """One variant through the run: its model, measurements and paired samples."""

    spec: Variant
    path: str  # its field path in the recipe: "" for `stages:`, "variants.N." otherwise
    handle: ModelHandle | None = None
    ms: list[dict] = field(default_factory=list)
    model_dir: Path | None = None
    policy: dict | None = None  # execution paths chosen on this host
    runtime: str | None = None  # what executes it when not torch eager
    paired: dict = field(default_factory=dict)  # metric -> paired samples / stats.Paired
    task_pairs: dict = field(default_factory=dict)  # <task>.<metric> -> paired item statistics
    context: dict = field(default_factory=dict)
    exports: list[dict] = field(default_factory=list)  # what `export:` wrote, or why not

    @property
    def name(self) -> str:
        return self.spec.name


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
    shared_node: bool = False  # a sweep trial: compute shares the node, timing holds it alone
    memory: Any = None  # compress.stream.budget.Plan under --max-memory
    t0: float = field(default_factory=time.perf_counter)
    base: ModelHandle | None = None
    windows: Any = None  # token windows [n, seq_len] for perplexity and KLD
    data: list[dict] = field(default_factory=list)  # provenance of every data set used
    base_ms: list[dict] = field(default_factory=list)
    base_context: dict = field(default_factory=dict)
    variants: list[VariantRun] = field(default_factory=list)

    def __post_init__(self) -> None:
        shorthand = self.recipe.variants is None
        self.variants = [
            VariantRun(spec=v, path="" if shorthand else f"variants.{j}.")
            for j, v in enumerate(self.recipe.variant_list)
        ]

    @property
    def streamed(self) -> bool:
        """Layer by layer from disk: the model does not fit in --max-memory."""
        return self.memory is not None and self.memory.mode == "stream"

    def model_dir(self, v: VariantRun) -> Path:
        """model/ for a one-variant recipe (`stages:`), models/<name>/ for `variants:`."""
        return self.run_dir / "model" if not v.path else self.run_dir / "models" / v.name


def load(st: RunState) -> None:
    """The baseline (float32) and the eval windows, tokenized once for every variant."""
    from compress import models

    log.info("loading baseline %s", st.recipe.model)
    if st.streamed:
        from compress.stream.run import load_base

        st.base = load_base(st.source, st.memory.folder)
    else:
        st.base = models.load(
            st.source,
            dtype="float32",
            device=st.device,
            trust_remote_code=st.recipe.trust_remote_code,
        )
        if st.base.placement is not None:  # several GPUs: what runs where, in the report
            st.run["placement"] = st.base.placement
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


def compress(st: RunState) -> None:
    """Every variant's stages on its own copy of the baseline, through the stage contract
    (records in `handle.stages`, weight bytes around each stage measured here, not claimed);
    each artifact saved; host kernels chosen. Calibration data is loaded once, if needed."""
    from compress.calibration.calibrate import load_calibration
    from compress.methods import needs_calibration
    from compress.methods.compose import check_widths

    held: dict = {}

    def calibration():  # loaded once, on first use by a stage that needs it
        if "set" not in held:
            held["set"] = load_calibration(st.base.tokenizer, st.recipe.calibration, st.data_dir)
            st.data.append(held["set"].provenance)
        return held["set"]

    for v in st.variants:  # the widths one stage leaves for the next, before any stage runs
        check_widths(st.base.model, v.spec.stages, f"{v.path}stages")
    for v in st.variants:
        needed = any(needs_calibration(s) for s in v.spec.stages)
        _compress_variant(st, v, calibration if needed else None)
    shutil.rmtree(st.run_dir / ".scratch", ignore_errors=True)


def _compress_variant(st: RunState, v: VariantRun, calibration) -> None:
    import torch

    from compress.methods import METHODS, StageContext
    from compress.profile.memory import weight_bytes
    from compress.quant.serialize import save_compressed
    from compress.stream import run as streamed

    base = st.base
    torch.manual_seed(st.recipe.seed)  # each variant as if it ran alone
    scratch = st.run_dir / ".scratch" / v.name
    v.handle = comp = ModelHandle(
        model=streamed.new_variant(base, scratch / "layers")
        if st.streamed
        else copy_model(base.model),
        tokenizer=base.tokenizer,
        source=base.source,
        dtype=base.dtype,
        device=st.device,
    )
    ctx = StageContext(
        model=comp,
        baseline=base,
        device=st.device,
        seed=st.recipe.seed,
        scratch_dir=scratch,
        data_dir=st.data_dir,
        calibration_loader=calibration,
    )
    before = weight_bytes(comp.model)
    for i, stage in enumerate(v.spec.stages):
        log.info("%sstage %d: %s", f"{v.name}: " if v.path else "", i, stage.method)
        name = f"compress: {v.path}stages.{i} ({stage.method})"
        with stage_errors(name):  # a crash: exit 4 naming the stage; BadInput stays 2
            record = METHODS[stage.method].apply(ctx, stage)
            check_finite_output(comp, stage=name)  # NaN/inf output: exit 1 naming the stage
        after = weight_bytes(comp.model)
        record = record.measured(before, after)
        before = after
        config = stage.model_dump(mode="json")
        comp.stages.append(record.model_copy(update={"config": config}).model_dump(mode="json"))
    if st.streamed:  # scored from the saved folder; no kernel timing (nothing is timed)
        v.model_dir = streamed.save_and_reload(comp, st.model_dir(v))
        return
    v.model_dir = save_compressed(comp, st.model_dir(v))
    v.policy = _kernel_policy(comp, st.recipe.profile, st.device)
    v.runtime = getattr(comp.model, "runtime", None) if comp.runtime != "torch" else None


def evaluate(st: RunState) -> None:
    """Weight bytes of every model; perplexity and KLD of every variant on the same windows,
    the baseline's logits computed once per window (paired)."""
    from compress.evaluate.perplexity import evaluate_many
    from compress.profile.memory import weight_bytes

    how = "parameters and buffers as held in memory, shared storage once"
    st.base_ms.append(exact("weights.bytes", weight_bytes(st.base.model), "bytes", how))
    for v in st.variants:
        v.ms.append(exact("weights.bytes", weight_bytes(v.handle.model), "bytes", how))
    _evaluate_tasks(st)
    if st.windows is None:
        return
    ev = st.recipe.eval
    res = evaluate_many(
        st.base.model,
        {v.name: v.handle.model for v in st.variants},
        st.windows,
        device=st.device,
        kld=ev.kld is not None and ev.kld.enabled,
        progress=st.progress,
        seed=st.recipe.seed,
    )
    st.base_ms += res["baseline"]
    nll_base = res["baseline_per_window"]
    for v in st.variants:
        one = res["variants"][v.name]
        v.ms += one["measurements"]
        nll = one["per_window"]["nll_comp"]
        v.paired.update({"wikitext2.perplexity": (nll_base, nll), "wikitext2.nll": (nll_base, nll)})


def _evaluate_tasks(st: RunState) -> None:
    """Every eval task on the baseline and all variants, item by item on the same items."""
    from compress.evaluate.tasks import run_task
    from compress.evaluate.taskspec import get_specs

    ev = st.recipe.eval
    limit = ev.quick_task_limit if st.quick else ev.task_limit
    models = {"baseline": st.base.model, **{v.name: v.handle.model for v in st.variants}}
    for ls in get_specs(ev.tasks, ev.include_path):
        with stage_errors(f"evaluate: task {ls.spec.task}"):
            res = run_task(
                ls, models, st.base.tokenizer, data_dir=st.data_dir, limit=limit,
                batch_size=ev.batch_size, device=st.device, progress=st.progress,
                seed=st.recipe.seed, max_length=ev.max_length, cache=ev.cache,
            )  # fmt: skip
        st.base_ms += res["measurements"]["baseline"]
        for v in st.variants:
            v.ms += res["measurements"][v.name]
            v.task_pairs.update(res["paired"][v.name])
        st.data.append(
            {
                "name": f"task {res['task']}",
                "location": res["data"],
                "text_sha256": res["data_sha256"],
                "spec": res["spec"],
                "spec_sha256": res["spec_sha256"],
                "items": res["items"],
                "seconds": res["seconds"],
                **({"cached": res["cached"]} if res["cached"] else {}),
            }
        )


def profile(st: RunState) -> None:
    """Free the in-process models, then time the baseline and every variant in interleaved
    rounds of fresh processes (one process per model per round)."""
    from compress.profile import nodelock
    from compress.profile.memory import dir_bytes
    from compress.profile.paired import Arm, profile_paired

    recipe = st.recipe
    timed = recipe.profile.enabled and not st.streamed  # streamed: see stream.run.NO_TIMING
    timing_copy = _baseline_for_timing(st.base, st.run_dir) if timed else None
    del st.base.model
    for v in st.variants:
        del v.handle.model
    gc.collect()
    if timed:
        arms = [Arm("baseline", str(timing_copy or recipe.model), "float32")]
        arms += [Arm(v.name, str(v.model_dir), v.handle.dtype, v.policy) for v in st.variants]
        try:
            with stage_errors("profile"), nodelock.timing():
                prof = profile_paired(
                    arms, recipe.profile, quick=st.quick, device=st.device, seed=recipe.seed
                )
        finally:
            if timing_copy is not None:
                shutil.rmtree(timing_copy, ignore_errors=True)
        _take_profile(st, prof, timed_from=timing_copy is not None)
    kind = st.base.source.kind
    src = f"size of the source weights file ({kind})"
    st.base_ms.append(exact("disk.artifact_bytes", st.base.source.file_bytes, "bytes", src))
    saved = "size of the saved compressed model folder"
    for v in st.variants:
        v.ms.append(exact("disk.artifact_bytes", dir_bytes(v.model_dir), "bytes", saved))


def _take_profile(st: RunState, prof: dict, *, timed_from: bool) -> None:
    def timed(label: str) -> list[dict]:
        return [m for m in prof["measurements"][label] if m["name"] != "weights.bytes"]

    st.base_ms += timed("baseline")
    st.base_context = dict(prof["context"]["baseline"], timing_protocol=prof["protocol"])
    if timed_from:
        st.base_context["timed_from"] = (
            f"an fp32 safetensors copy of the loaded baseline (identical tensors), saved "
            f"once so each timing process loads it directly instead of converting "
            f"'{st.recipe.model}' again; deleted after profiling"
        )
    for v in st.variants:
        v.ms += timed(v.name)
        v.context = dict(prof["context"][v.name], timing_protocol=prof["protocol"])
        v.paired.update(prof["paired"][v.name])


def export(st: RunState) -> None:
    """The recipe's `export:` formats for every variant, into <run>/exports/. A format that
    cannot hold a variant is recorded with the reason (the run's results stand)."""
    from compress.errors import ExportError
    from compress.export import EXTENSIONS, export_folder

    if not st.recipe.export:
        return
    out = st.run_dir / "exports"
    out.mkdir(exist_ok=True)
    for v in st.variants:
        for fmt in st.recipe.export:
            dest = out / f"{v.name}{EXTENSIONS[fmt]}"
            with stage_errors(f"export ({fmt}, {v.name})"):
                try:
                    rec = export_folder(v.model_dir, fmt, dest)
                except ExportError as e:
                    log.warning("%s: not exported as %s: %s", v.name, fmt, e)
                    v.exports.append({"format": fmt, "written": False, "reason": str(e)})
                    continue
            rec.pop("tensors", None)
            v.exports.append({"written": True, **rec})


def exact(name: str, value: float | None, unit: str, method: str) -> dict:
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
    """Time the compressed model's execution paths on this host (torch runtime only). Not when
    nothing is profiled: the choice would only make the evaluation's last digits depend on
    which path won the timing here (each module keeps its default path, as under `fixed`)."""
    if comp.runtime != "torch" or profile.kernels == "fixed" or not profile.enabled:
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
