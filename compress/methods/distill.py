"""`distill`: knowledge distillation of the student (the model as the earlier stages left it,
e.g. after `structured` pruning) from the frozen teacher (the uncompressed baseline).

The loss is kl_weight x T^2 KL(teacher || student) on temperature-softened next-token
distributions (Hinton et al. 2015) + lm_weight x next-token cross-entropy on the data +
hidden_weight x the mean squared error between student and teacher hidden states (the output
of student layer i against teacher layer kept_layers[i], from the `structured` stage record;
divided by the teacher's mean square). AdamW trains every float parameter of the student
(float32 master weights, forwards in `dtype`), with a linear warm-up and a cosine decay to
0.1 x lr; the teacher only runs forwards, without gradients.

Data (never the evaluation's test split): a named set or local file, tokenized once and cut
into non-overlapping windows, or sequences sampled from the teacher (`teacher_generated`,
offline). The windows are shuffled with the seed and split train / held-out; the training
order is a function of (seed, step). Zeros written by an earlier unstructured/N:M pruning stage
stay zeros. The held-out loss is measured before training, every
`eval_every` steps and at the end; the student with the lowest is restored at the end.
Checkpoints in the scratch folder make an interrupted run resumable (same fingerprint only).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from compress._config import Strict
from compress.errors import BadInput
from compress.methods.registry import StageContext, StageRecord, register

if TYPE_CHECKING:
    from compress.handle import ModelHandle

log = logging.getLogger(__name__)

BUDGETS = ("steps", "tokens", "minutes")


class DistillConfig(Strict):
    needs_calibration: ClassVar[bool] = False
    method: Literal["distill"] = "distill"
    temperature: float = Field(2.0, gt=0, description="softmax temperature of the KL term")
    kl_weight: float = Field(1.0, ge=0, description="weight of T^2 KL(teacher || student)")
    lm_weight: float = Field(0.0, ge=0, description="weight of next-token cross-entropy")
    hidden_weight: float = Field(
        0.0,
        ge=0,
        description="weight of the hidden-state MSE (student layer i vs teacher layer "
        "kept_layers[i] from a structured stage, identity when the depths match), divided by "
        "the teacher's mean square",
    )
    lr: float = Field(1e-4, gt=0, description="peak learning rate of AdamW")
    warmup_steps: int = Field(20, ge=0, description="linear warm-up steps, then cosine decay")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (matrices only)")
    batch_size: int = Field(4, ge=1, description="sequences per micro-batch")
    seq_len: int = Field(256, ge=8, description="tokens per sequence")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    steps: int | None = Field(None, gt=0, description="budget: optimizer steps")
    tokens: int | None = Field(None, gt=0, description="budget: training tokens (student input)")
    minutes: float | None = Field(None, gt=0, description="budget: wall-clock minutes")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="compute dtype of the forwards (autocast); weights stay float32"
    )
    dataset: str = Field(
        "wikitext2-calib",
        description="training text: a named set, a local .txt/.jsonl file, or "
        "'teacher_generated' (sequences sampled from the teacher, no data needed)",
    )
    generated_sequences: int = Field(
        64, ge=2, description="teacher_generated: sequences of seq_len tokens to sample"
    )
    generate_top_k: int = Field(50, ge=1, description="teacher_generated: top-k sampling")
    generate_temperature: float = Field(
        1.0, gt=0, description="teacher_generated: sampling temperature"
    )
    holdout: int | float = Field(
        0.1, description="sequences kept for the held-out loss: a fraction (0-1) or a count"
    )
    eval_every: int = Field(50, ge=1, description="held-out loss every this many steps")
    checkpoint_every: int | None = Field(
        100, ge=1, description="checkpoint every this many steps (and at the end); null = end"
    )
    seed: int = Field(0, description="data shuffle, batch order and teacher sampling")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="clip the gradient norm to this; null = no clipping"
    )

    @field_validator("holdout")
    @classmethod
    def _holdout(cls, v: int | float) -> int | float:
        if isinstance(v, float) and not 0 < v < 1:
            raise ValueError(f"a holdout fraction must be between 0 and 1 (exclusive); got {v}")
        if isinstance(v, int) and v < 1:
            raise ValueError(f"a holdout count must be at least 1; got {v}")
        return v

    @model_validator(mode="after")
    def _budget_and_loss(self) -> DistillConfig:
        given = [b for b in BUDGETS if getattr(self, b) is not None]
        if len(given) != 1:
            got = f"got {' and '.join(given)}" if given else "got none"
            raise ValueError(f"set exactly one budget of {', '.join(BUDGETS)} (> 0); {got}")
        if not (self.kl_weight or self.lm_weight or self.hidden_weight):
            raise ValueError("kl_weight, lm_weight and hidden_weight are all 0: nothing to train")
        return self


def _composed_kept(stages: list[dict[str, Any]]) -> list[int] | None:
    """Teacher layer of each student layer through every `structured` stage so far, or None
    when no stage recorded kept layers."""
    kept: list[int] | None = None
    for s in stages:
        k = (s.get("details") or {}).get("kept_layers") if s.get("method") == "structured" else None
        if k is not None:
            kept = list(k) if kept is None else [kept[i] for i in k]
    return kept


def layer_map(student: ModelHandle, teacher: ModelHandle) -> list[int]:
    """Student decoder layer i -> teacher decoder layer; BadInput when it cannot be known."""
    from compress.calibration.calibrate import decoder_layers

    n_s = len(decoder_layers(student.model)[1])
    n_t = len(decoder_layers(teacher.model)[1])
    kept = _composed_kept(student.stages)
    if kept is None and n_s == n_t:
        return list(range(n_s))
    if kept is None or len(kept) != n_s or not all(0 <= j < n_t for j in kept):
        raise BadInput(
            f"distill: hidden_weight needs to know which teacher layer each of the student's "
            f"{n_s} layers comes from (the teacher has {n_t}); "
            + ("no structured stage recorded kept_layers." if kept is None else f"got {kept}."),
            fix="Run structured before distill, or set hidden_weight: 0.",
        )
    return kept


def _summary(steps: int, tokens: int, before: float, after: float) -> str:
    tok = f"{tokens / 1e6:.1f}M" if tokens >= 1e6 else f"{tokens / 1e3:.0f}k"
    return f"distill: {steps} steps, {tok} tokens, held-out KLD {before:.3g} -> {after:.3g}"


def _prepare(ctx: StageContext) -> tuple[ModelHandle, dict[str, Any]]:
    """The teacher, after the checks that need no data; the student's original dtypes and
    requires_grad flags, to put back after training."""
    from compress.methods._distill_train import refuse_quantized

    teacher = ctx.baseline
    if teacher is None:
        raise BadInput(
            "distill: there is no teacher (the uncompressed baseline) in this run.",
            fix="Run distill inside a recipe, or pass baseline= to run_stage.",
        )
    if teacher is ctx.model or teacher.model is ctx.model.model:
        raise BadInput("distill: the teacher and the student are the same model object.")
    refuse_quantized(ctx.model.model, ctx.model.runtime)
    student = ctx.model.model
    orig = {n: (p.dtype, p.requires_grad) for n, p in student.named_parameters()}
    orig.update({f"buffer:{n}": (b.dtype, False) for n, b in student.named_buffers()})
    return teacher, orig


def _to_master(student) -> None:
    """Float32 weights (and float buffers), every parameter trained."""
    for p in student.parameters():
        p.data = p.data.float()
        p.requires_grad_(True)
    for b in student.buffers():
        if b.is_floating_point():
            b.data = b.data.float()


def _restore_student(student, orig: dict[str, Any]) -> None:
    """The dtypes and requires_grad flags the student came with; no gradients kept."""
    for n, p in student.named_parameters():
        dtype, grad = orig[n]
        p.data = p.data.to(dtype)
        p.requires_grad_(grad)
        p.grad = None
    for n, b in student.named_buffers():
        b.data = b.data.to(orig[f"buffer:{n}"][0])


@contextlib.contextmanager
def _eval_mode(*models) -> Iterator[None]:
    """Both models in eval mode (no dropout) inside; their modes as they were afterwards."""
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        yield
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)


def _train(ctx: StageContext, cfg: DistillConfig, models, data, fp: str, root) -> tuple:
    """Resume or start, train to the budget, restore the best student: (state, the step it
    resumed from or None, how many pruned zeros were kept)."""
    from compress.methods import _distill_ckpt as ck
    from compress.methods import _distill_data as dd
    from compress.methods import _distill_train as tr

    ckpts = ck.Checkpoints(root)
    kld_before = None if ckpts.exists() else tr.heldout_kld(models, data, cfg.batch_size)
    masks = tr.sparsity_masks(models.student, ctx.model.stages)
    _to_master(models.student)
    opt = tr.optimizer(models.student, cfg)
    st = ckpts.load(fp, models.student, opt)
    resumed = st.step if st is not None else None
    st = st or ck.TrainState(fingerprint=fp, kld_before=kld_before)
    ckpts.clean(keep_best=st.best_step)
    total = cfg.steps
    if cfg.tokens:
        total = dd.steps_for_tokens(cfg.tokens, cfg.batch_size, cfg.seq_len, cfg.grad_accum)
    if total is not None and cfg.warmup_steps >= total:
        log.warning(
            "distill: warmup_steps %d >= %d steps: lr never reaches its peak",
            cfg.warmup_steps,
            total,
        )
    order = dd.BatchOrder(len(data.train), cfg.batch_size, cfg.seed)
    job = tr.Job(ctx, cfg, models, data, order, opt, ckpts, ck.Best(root), total, masks)
    st = tr.run(job, st)
    job.best.restore(models.student, st.best_step)
    return st, resumed, sum(int(m.sum()) for _, m in masks)


@register(DistillConfig)
def apply(ctx: StageContext, cfg: DistillConfig) -> StageRecord:
    from compress.methods import _distill_ckpt as ck
    from compress.methods import _distill_data as dd
    from compress.methods import _distill_train as tr

    t0 = time.perf_counter()
    teacher, orig = _prepare(ctx)
    student = ctx.model.model
    lmap = layer_map(ctx.model, teacher) if cfg.hidden_weight else None
    data = dd.load(ctx.model, teacher, cfg, getattr(ctx, "data_dir", None))
    models = tr.Models(student, teacher.model, lmap)
    root = None
    if ctx.scratch_dir is not None:
        root = ctx.scratch_dir / "distill" / f"stage-{len(ctx.model.stages)}"
    fp = ck.fingerprint(
        cfg.model_dump(mode="json"),
        ctx.model.stages,
        ck.weights_digest(student),
        ck.weights_digest(teacher.model),
        data.provenance["token_ids_sha256"],
    )
    with _eval_mode(student, teacher.model):
        try:
            st, resumed, zeros = _train(ctx, cfg, models, data, fp, root)
        finally:
            _restore_student(student, orig)
        kld_after = tr.heldout_kld(models, data, cfg.batch_size)
    extra = {"resumed": resumed, "kld_after": kld_after, "root": root, "kept_zeros": zeros}
    return _record(cfg, st, data, lmap, extra, time.perf_counter() - t0)


def _record(cfg, st, data, lmap, extra: dict[str, Any], seconds: float) -> StageRecord:
    before = st.kld_before
    budget = {b: getattr(cfg, b) for b in BUDGETS if getattr(cfg, b) is not None}
    notes = [
        f"loss: {cfg.kl_weight} x T^2 KL(teacher || student) at T {cfg.temperature}"
        + (f" + {cfg.lm_weight} x next-token CE" if cfg.lm_weight else "")
        + (f" + {cfg.hidden_weight} x normalized hidden MSE" if cfg.hidden_weight else ""),
        f"AdamW peak lr {cfg.lr}, {cfg.warmup_steps} warm-up steps then cosine to 0.1x, "
        f"{cfg.batch_size} x {cfg.seq_len} tokens x {cfg.grad_accum} per step, forwards in "
        f"{cfg.dtype}",
        f"best held-out loss at step {st.best_step} of {st.step}; that student is kept",
    ]
    resumed, root = extra["resumed"], extra["root"]
    if resumed is not None:
        notes.append(f"resumed from the checkpoint at step {resumed}")
    if extra["kept_zeros"]:
        notes.append(
            f"an earlier stage pruned weights to 0: those {extra['kept_zeros']} zeros are "
            "kept (re-applied after every optimizer step)"
        )
    return StageRecord.make(
        method="distill",
        summary=_summary(st.step, st.tokens_seen, before, extra["kld_after"]),
        notes=notes,
        seconds=seconds,
        config=cfg.model_dump(mode="json"),
        curve=st.curve,
        steps=st.step,
        tokens_seen=st.tokens_seen,
        train_seconds=st.train_seconds,
        budget=budget,
        best_step=st.best_step,
        best_heldout_loss=st.best_loss,
        kld_before=before,
        kld_after=extra["kld_after"],
        kept_zeros=extra["kept_zeros"],
        resumed_from_step=resumed,
        layer_map=lmap,
        data=data.provenance,
        checkpoint_dir=str(root) if root is not None else None,
    )
