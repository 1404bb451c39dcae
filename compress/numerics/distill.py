"""Knowledge distillation's tensor math, apart from model plumbing.

- `kd_loss`: Hinton et al. (2015): KL(teacher || student) between the temperature-softened
  distributions softmax(z / T), averaged over tokens and multiplied by T^2 so its gradients
  keep the same scale whatever T is.
- `token_kld`: the same divergence at T = 1 for every token (what `distill` reports before
  and after training, and what the eval's KLD measures).
- `hidden_mse`: mean squared error between hidden states, optionally divided by the teacher's
  mean square (scale-free: layers with large residual streams do not dominate).
- `lr_at`: linear warm-up to the peak, then cosine decay to `floor` x peak at the last step.

All losses compute in float32 whatever the logits' dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check_logits(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} vs teacher {tuple(teacher.shape)}")


def token_kld(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) at T = 1 per token: logits [..., vocab] -> [...], float32."""
    _check_logits(student_logits, teacher_logits)
    log_s = F.log_softmax(student_logits.float(), dim=-1)
    log_t = F.log_softmax(teacher_logits.float(), dim=-1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(-1)


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """T^2 x mean over tokens of KL(softmax(teacher / T) || softmax(student / T)) (a scalar)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    t = float(temperature)
    kl = token_kld(student_logits.float() / t, teacher_logits.float() / t)
    return kl.mean() * (t * t)


def hidden_mse(
    student_h: torch.Tensor, teacher_h: torch.Tensor, normalize: bool = False
) -> torch.Tensor:
    """Mean squared error between two hidden-state tensors of one shape (a float32 scalar);
    `normalize` divides it by the teacher's mean square (1.0 = as far as predicting zeros)."""
    if student_h.shape != teacher_h.shape:
        raise ValueError(
            f"student hidden states {tuple(student_h.shape)} vs teacher {tuple(teacher_h.shape)}"
        )
    t = teacher_h.float()
    mse = F.mse_loss(student_h.float(), t)
    if normalize:
        mse = mse / t.pow(2).mean().clamp(min=1e-12)
    return mse


def lr_at(step: int, total: float | None, warmup: int, peak: float, floor: float = 0.1) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up over the first `warmup`
    steps ((step + 1) / warmup x peak), then a cosine from peak down to floor x peak, reached
    at step total - 1. `total` None (an unknown length): constant peak after the warm-up."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if total is None:
        return peak
    span = total - 1 - warmup
    progress = 1.0 if span <= 0 else min(1.0, max(0.0, (step - warmup) / span))
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))
