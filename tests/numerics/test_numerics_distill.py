"""compress.numerics.distill: the KD loss against a hand computation, its gradient, the
per-token KLD, the hidden-state MSE and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from compress.numerics.distill import hidden_mse, kd_loss, lr_at, token_kld
from compress.testing import kl_per_token

STUDENT = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
TEACHER = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def _hand_kl(s: list[float], t: list[float]) -> float:
    p, q = _softmax(t), _softmax(s)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_kd_loss_matches_a_hand_computation(temperature):
    t = temperature
    per_token = [
        _hand_kl([v / t for v in s], [v / t for v in te])
        for s, te in zip(STUDENT.tolist(), TEACHER.tolist(), strict=True)
    ]
    expected = t * t * sum(per_token) / 2
    assert float(kd_loss(STUDENT, TEACHER, temperature)) == pytest.approx(expected, rel=1e-5)


def test_kd_loss_is_zero_for_equal_logits_and_positive_otherwise():
    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    assert float(kd_loss(logits, logits.clone(), 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(logits + 3.0, logits, 2.0)) == pytest.approx(0.0, abs=1e-6)  # shift
    assert float(kd_loss(logits.flip(-1), logits, 2.0)) > 0
    assert kd_loss(logits.bfloat16(), logits.bfloat16(), 1.0).dtype == torch.float32


def test_kd_loss_gradient_flows_to_the_student_only():
    s = STUDENT.clone().requires_grad_(True)
    t = TEACHER.clone().requires_grad_(True)
    kd_loss(s, t.detach(), 2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None
    # d/ds of T^2 KL(p_t || softmax(s/T)) / n = T (softmax(s/T) - p_t) / n
    expected = 2.0 * (torch.softmax(STUDENT / 2, -1) - torch.softmax(TEACHER / 2, -1)) / 2
    torch.testing.assert_close(s.grad, expected)


def test_kd_loss_refuses_a_bad_temperature_or_shapes():
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(STUDENT, TEACHER, 0.0)
    with pytest.raises(ValueError, match="teacher"):
        kd_loss(STUDENT, TEACHER[:1], 1.0)


def test_token_kld_per_token_at_temperature_one():
    kl = token_kld(STUDENT, TEACHER)
    assert kl.shape == (2,)
    for i in range(2):
        assert float(kl[i]) == pytest.approx(
            _hand_kl(STUDENT[i].tolist(), TEACHER[i].tolist()), rel=1e-5
        )
    assert float(kl.mean()) == pytest.approx(kl_per_token(TEACHER, STUDENT), rel=1e-5)
    assert float(kl.mean()) == pytest.approx(float(kd_loss(STUDENT, TEACHER, 1.0)), rel=1e-6)


def test_hidden_mse_plain_and_normalized():
    t = torch.tensor([[1.0, -1.0], [2.0, 0.0]])
    s = torch.tensor([[1.0, 1.0], [2.0, 1.0]])  # errors 0, 2, 0, 1 -> mse 5/4
    assert float(hidden_mse(s, t)) == pytest.approx(1.25)
    assert float(hidden_mse(s, t, normalize=True)) == pytest.approx(1.25 / 1.5)
    assert float(hidden_mse(torch.zeros_like(t), t, normalize=True)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="hidden"):
        hidden_mse(s, t[:1])


def test_lr_warms_up_linearly_then_decays_by_cosine_to_a_tenth():
    peak, total, warm = 1e-3, 111, 10
    assert lr_at(0, total, warm, peak) == pytest.approx(1e-4)
    assert lr_at(4, total, warm, peak) == pytest.approx(5e-4)
    assert lr_at(9, total, warm, peak) == pytest.approx(peak)
    assert lr_at(10, total, warm, peak) == pytest.approx(peak)
    assert lr_at(60, total, warm, peak) == pytest.approx(0.55 * peak)  # half way: cos = 0
    assert lr_at(total - 1, total, warm, peak) == pytest.approx(0.1 * peak)
    assert lr_at(total + 50, total, warm, peak) == pytest.approx(0.1 * peak)
    lrs = [lr_at(i, total, warm, peak) for i in range(warm, total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))  # monotone decay
    assert lr_at(0, 5, 0, peak) == pytest.approx(peak)  # no warm-up
    assert lr_at(500, None, warm, peak) == peak  # unknown length: constant after warm-up
