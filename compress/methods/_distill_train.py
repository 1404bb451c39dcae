"""The distillation loop: losses on a batch, held-out evaluation, the optimizer steps with
their learning-rate schedule, the budget, evaluation and checkpoint cadence."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from compress.errors import BadInput, StageFailed

if TYPE_CHECKING:
    import torch
    from torch import nn

    from compress.methods._distill_ckpt import Best, Checkpoints, TrainState
    from compress.methods._distill_data import BatchOrder, DistillData
    from compress.methods.distill import DistillConfig
    from compress.methods.registry import StageContext

log = logging.getLogger(__name__)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def compute(cfg: DistillConfig, device: torch.device):
    """The autocast context of the training forwards (none for float32)."""
    import torch

    if cfg.dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, cfg.dtype))


@contextlib.contextmanager
def layer_outputs(model: nn.Module, which: list[int] | None) -> Iterator[dict[int, Any]]:
    """Collect the outputs of decoder layers `which` (nothing when None) during forwards."""
    from compress.calibration.calibrate import decoder_layers

    got: dict[int, Any] = {}
    if not which:
        yield got
        return
    _, layers = decoder_layers(model)

    def hook(i: int):
        def fn(_m, _inp, out):
            got[i] = out[0] if isinstance(out, tuple) else out

        return fn

    handles = [layers[i].register_forward_hook(hook(i)) for i in sorted(set(which))]
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


@dataclass
class Models:
    """The student (trained), the frozen teacher and the student -> teacher layer map (None
    when the hidden-state loss is off)."""

    student: nn.Module
    teacher: nn.Module
    layer_map: list[int] | None


def batch_loss(m: Models, ids: torch.Tensor, cfg: DistillConfig) -> torch.Tensor:
    """kl_weight x kd_loss + lm_weight x next-token CE + hidden_weight x mean normalized
    hidden MSE over mapped layers, on one batch of token ids [batch, seq_len]."""
    import torch
    import torch.nn.functional as F

    from compress.numerics.distill import hidden_mse, kd_loss

    dev = _device(m.student)
    lmap = m.layer_map
    t_dev = _device(m.teacher)
    with torch.no_grad(), compute(cfg, t_dev), layer_outputs(m.teacher, lmap) as t_hidden:
        t_logits = m.teacher(ids.to(t_dev), use_cache=False).logits
    with compute(cfg, dev), layer_outputs(m.student, list(range(len(lmap or [])))) as s_hidden:
        s_logits = m.student(ids.to(dev), use_cache=False).logits
    loss = torch.zeros((), device=dev)
    if cfg.kl_weight:
        loss = loss + cfg.kl_weight * kd_loss(s_logits, t_logits.to(dev), cfg.temperature)
    if cfg.lm_weight:
        v = s_logits.shape[-1]
        ce = F.cross_entropy(
            s_logits[:, :-1].float().reshape(-1, v), ids[:, 1:].reshape(-1).to(dev)
        )
        loss = loss + cfg.lm_weight * ce
    if cfg.hidden_weight and lmap:
        mse = [
            hidden_mse(s_hidden[i], t_hidden[j].to(dev), normalize=True) for i, j in enumerate(lmap)
        ]
        loss = loss + cfg.hidden_weight * torch.stack(mse).mean()
    return loss


def heldout_loss(m: Models, data: DistillData, cfg: DistillConfig) -> float:
    """The training loss over the held-out windows (mean per window)."""
    import torch

    total, n = 0.0, 0
    with torch.no_grad():
        for ids in data.holdout.split(cfg.batch_size):
            total += float(batch_loss(m, ids, cfg)) * ids.shape[0]
            n += ids.shape[0]
    return total / max(n, 1)


def heldout_kld(m: Models, data: DistillData, batch_size: int) -> float:
    """Mean per-token KL(teacher || student) at T = 1 on the held-out windows, each model in
    its own dtype (no autocast): the student as it is handed over."""
    import torch

    from compress.numerics.distill import token_kld

    total, n = 0.0, 0
    dev = _device(m.student)
    with torch.no_grad():
        for ids in data.holdout.split(batch_size):
            t = m.teacher(ids.to(_device(m.teacher)), use_cache=False).logits.to(dev)
            s = m.student(ids.to(dev), use_cache=False).logits
            kl = token_kld(s, t)
            total, n = total + float(kl.sum()), n + kl.numel()
    return total / max(n, 1)


def refuse_quantized(model: nn.Module, runtime: str = "torch") -> None:
    """BadInput unless the student is a plain float torch model (no packed or integer weights)."""
    packed = [
        f"{name} ({type(mod).__name__})"
        for name, mod in model.named_modules()
        if type(mod).__module__.startswith(("compress.quant", "bitsandbytes", "torchao"))
        or any(not p.is_floating_point() for p in mod.parameters(recurse=False))
    ]
    if runtime != "torch" or packed:
        what = f"runtime {runtime}" if runtime != "torch" else ", ".join(packed[:3])
        raise BadInput(
            f"distill: the student is quantized ({what}{', ...' if len(packed) > 3 else ''}); "
            "it trains float weights only: distill before quantization stages.",
            fix="Move the distill stage before the quantization stages in the recipe.",
        )


#: stages that prune by writing zeros into dense weights; distill keeps those zeros
SPARSE_METHODS = ("magnitude", "wanda", "sparsegpt")


def sparsity_masks(model: nn.Module, stages: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    """(matrix, where it is exactly 0) for each weight matrix holding zeros, when an earlier
    stage pruned unstructured or N:M (otherwise training would fill the zeros back in)."""
    if not any(s.get("method") in SPARSE_METHODS for s in stages):
        return []
    masks = []
    for p in model.parameters():
        if p.ndim == 2:
            zeros = p.detach() == 0
            if zeros.any():
                masks.append((p, zeros))
    return masks


def optimizer(model: nn.Module, cfg: DistillConfig) -> torch.optim.Optimizer:
    """AdamW over every float parameter; weight decay on matrices only (not norms, biases)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=cfg.lr)


@dataclass
class Job:
    """Everything the loop needs besides the state it advances."""

    ctx: StageContext
    cfg: DistillConfig
    models: Models
    data: DistillData
    order: BatchOrder
    opt: torch.optim.Optimizer
    ckpts: Checkpoints
    best: Best
    total_steps: int | None  # None: a minutes budget
    masks: list[tuple[Any, Any]] = field(default_factory=list)  # (parameter, zeros to keep)

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.seq_len * self.cfg.grad_accum


def train_step(job: Job, step: int, lr: float) -> float:
    """One optimizer step (grad_accum micro-batches) at learning rate `lr`; its mean loss."""
    import torch

    cfg, model = job.cfg, job.models.student
    for g in job.opt.param_groups:
        g["lr"] = lr
    job.opt.zero_grad(set_to_none=True)
    total = 0.0
    for a in range(cfg.grad_accum):
        ids = job.data.train[job.order.indices(step * cfg.grad_accum + a)]
        loss = batch_loss(job.models, ids, cfg)
        if not torch.isfinite(loss):
            raise StageFailed(
                f"distill: the loss is {float(loss)} at step {step + 1}.",
                fix="Lower lr, or train in dtype float32.",
            )
        (loss / cfg.grad_accum).backward()
        total += float(loss.detach())
    if cfg.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.grad is not None], cfg.max_grad_norm
        )
    job.opt.step()
    with torch.no_grad():
        for p, zeros in job.masks:
            p.masked_fill_(zeros, 0)
    return total / cfg.grad_accum


def evaluate(job: Job, st: TrainState) -> float:
    """Held-out loss at the current step, into the curve; keeps the student if it is best."""
    loss = heldout_loss(job.models, job.data, job.cfg)
    st.curve["heldout_step"].append(st.step)
    st.curve["heldout_loss"].append(loss if math.isfinite(loss) else None)
    if st.improved(loss):
        st.best_step, st.best_loss = st.step, loss
        job.best.keep(job.models.student, st.step)
    log.info("distill: step %d held-out loss %.4f (best %.4f)", st.step, loss, st.best_loss)
    return loss


def _done(job: Job, st: TrainState) -> bool:
    if job.total_steps is not None:
        return st.step >= job.total_steps
    return st.train_seconds >= job.cfg.minutes * 60


def _schedule_total(job: Job, st: TrainState) -> float | None:
    """Steps the schedule spans; under a minutes budget, estimated from the pace so far."""
    if job.total_steps is not None:
        return job.total_steps
    if st.step == 0 or st.train_seconds <= 0:
        return None
    return max(st.step + 1, st.step * job.cfg.minutes * 60 / st.train_seconds)


def _left(job: Job, st: TrainState, per_step: float) -> float:
    if job.total_steps is None:
        return max(0.0, job.cfg.minutes * 60 - st.train_seconds)
    return (job.total_steps - st.step) * per_step


def run(job: Job, st: TrainState) -> TrainState:
    """Train from `st` until the budget is spent: held-out loss every eval_every steps and at
    the end, checkpoints every checkpoint_every steps and at the end."""
    from compress.numerics.distill import lr_at
    from compress.progress import tqdm

    cfg = job.cfg
    if not st.curve["heldout_step"]:
        evaluate(job, st)  # the starting student is the first candidate for best
    t0, seconds0, step0 = time.perf_counter(), st.train_seconds, st.step
    bar = tqdm(total=job.total_steps, initial=st.step, desc="distill", unit="step")
    try:
        while not _done(job, st):
            lr = lr_at(st.step, _schedule_total(job, st), cfg.warmup_steps, cfg.lr)
            loss = train_step(job, st.step, lr)
            st.step += 1
            st.tokens_seen += job.tokens_per_step
            st.train_seconds = seconds0 + time.perf_counter() - t0
            for key, value in (("step", st.step), ("train_loss", loss), ("lr", lr)):
                st.curve[key].append(value)
            done = _done(job, st)
            if st.step % cfg.eval_every == 0 or done:
                evaluate(job, st)
            if done or (cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0):
                job.ckpts.save(st, job.models.student, job.opt)
            per_step = (st.train_seconds - seconds0) / (st.step - step0)
            left = _left(job, st, per_step)
            bar.update(1)
            bar.set_postfix_str(
                f"loss {loss:.4f}, {job.tokens_per_step / max(per_step, 1e-9):.0f} tok/s, "
                f"left {int(left // 60)}m{int(left % 60):02d}s"
            )
            job.ctx.report_progress("distill", st.step, job.total_steps or 0)
    finally:
        bar.close()
    if st.curve["heldout_step"][-1] != st.step:  # e.g. resumed with nothing left to train
        evaluate(job, st)
    return st
