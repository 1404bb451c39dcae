"""The second-order machinery GPTQ and SparseGPT share, as pure tensor functions:

    H = 2/n * sum_x x^T x        per Linear input, folded in batch by batch (`hessian_update`)
    U = chol((H + damp I)^-1)^T  the upper Cholesky factor both solves walk column by column

plus the per-row output energy w H w^T that turns their errors into relative ones.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable
from typing import TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")

# The solve is mostly small ops; up to this many weights (rows x cols) it runs on one CPU
# thread: on a busy 2-core VM six SmolLM2 solves took 1.3 s on one thread and 5-12 s on two
# (a thread barrier on every small op).
_ONE_THREAD_MAX = 1 << 22
_HESSIAN_BLOCK = 384  # columns per block of the x^T x update


@contextlib.contextmanager
def _threads(n: int | None):
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def hessian_update(H: torch.Tensor | None, x: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
    """Fold a batch of layer inputs `x` [..., in] into the running H = 2/n * sum x^T x.

    H and the product x^T x are float32 whatever x's dtype. (A bfloat16 GEMM would be ~3x
    faster on CPU, but its bf16-rounded output, 2^-9 relative on every entry, made the damped
    H of SmolLM2's o_proj indefinite: activations with a few huge channels need float32.)
    """
    x = x.detach().reshape(-1, x.shape[-1])
    m = x.shape[0]
    if H is None:
        H = torch.zeros(x.shape[-1], x.shape[-1], dtype=torch.float32, device=x.device)
    if m == 0:
        return H, n
    total = n + m
    H.mul_(n / total)
    # upper block-triangle only, mirrored: ~25-30% fewer FLOPs than one full GEMM (measured at
    # 576 and 1536 wide on 2 cores), bit-identical result
    d = x.shape[1]
    nb = max(1, math.ceil(d / _HESSIAN_BLOCK))
    edges = [round(i * d / nb) for i in range(nb + 1)]
    # inputs of IN_PLACE_MIN+ features are cast to float32 ~16 MB of rows at a time (a 7B
    # down_proj's 4096 x 11008 chunk would be 180 MB at once); narrower ones in one piece
    step = m if d < IN_PLACE_MIN else max(1, CAST_CHUNK // d)
    for r0 in range(0, m, step):
        xc = x[r0 : r0 + step].float()
        for a0, a1 in zip(edges[:-1], edges[1:], strict=True):
            H[a0:a1, a0:].addmm_(xc[:, a0:a1].t(), xc[:, a0:], alpha=2.0 / total)
        del xc
    for a0, a1 in zip(edges[:-1], edges[1:], strict=True):
        if a1 < d:
            H[a1:, a0:a1] = H[a0:a1, a1:].t()
    return H, total


def output_energy(W: torch.Tensor, H: torch.Tensor, chunk: int = 1 << 22) -> torch.Tensor:
    """Per output row r: w_r H w_r^T, i.e. (2/n) * ||X w_r||^2 over the calibration inputs
    (in row chunks of about `chunk` weights, so a big W is never copied to float32 whole)."""
    H = H.float()
    step = max(1, chunk // W.shape[1])
    out = []
    for r0 in range(0, W.shape[0], step):
        w = W[r0 : r0 + step].float()
        out.append(((w @ H) * w).sum(1))
    return torch.cat(out) if len(out) > 1 else out[0]


def chol_inverse_upper(
    H: torch.Tensor, damp: float, *, consume: bool = False
) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1; damping grows x10 (at most 4
    times) if H is not numerically positive definite. Returns the factor and the damp used.

    Intermediates are freed as soon as the next one exists; from `IN_PLACE_MIN` columns on
    (CPU), the three LAPACK steps overwrite one damped copy of H, so a 7B model's 11008-wide
    down_proj needs one extra 485 MB matrix instead of three. With `consume` (same sizes; the
    caller no longer needs H) they overwrite H itself and no copy is made: H is the factor
    afterwards (see `consumes`)."""
    mean_diag = float(torch.diagonal(H).mean())
    own = consume and consumes(H)  # factor H itself; else a damped copy each attempt
    in_place = H.device.type == "cpu" and H.shape[0] >= IN_PLACE_MIN  # (always when own)
    diag = torch.diagonal(H).clone() if own else None
    for attempt in range(5):
        d = damp * 10**attempt
        Hd = H if own else H.clone()
        Hd.diagonal().add_(d * mean_diag)
        U = _lapack_in_place(Hd, clean=not own) if in_place else _torch_steps(Hd)
        del Hd
        if U is not None and all_finite(U):
            if own:
                _zero_below_diagonal(U)
            if attempt:
                log.warning("gptq: H not positive definite; damping raised to %g", d)
            return U, d
        del U
        if own:  # LAPACK wrote only H's upper triangle: rebuild it for the next attempt
            _restore_upper(H, diag)
    raise ValueError(f"Hessian is not positive definite even with damping {d:g}")


def consumes(H: torch.Tensor) -> bool:
    """Whether `chol_inverse_upper(H, consume=True)` overwrites H (float32, CPU, contiguous,
    `IN_PLACE_MIN` columns or more) instead of factoring a copy."""
    return (
        H.device.type == "cpu"
        and H.dtype == torch.float32
        and H.is_contiguous()
        and H.shape[0] >= IN_PLACE_MIN
    )


def _restore_upper(H: torch.Tensor, diag: torch.Tensor, rows: int = 1024) -> None:
    """H's upper triangle and diagonal again from its strict lower triangle and `diag`."""
    n = H.shape[0]
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        blk = H[r0:r1, r0:r1]
        blk.copy_(torch.tril(blk, -1) + torch.tril(blk, -1).t())
        if r1 < n:
            H[r0:r1, r1:] = H[r1:, r0:r1].t()
    torch.diagonal(H).copy_(diag)


def _zero_below_diagonal(H: torch.Tensor, rows: int = 1024) -> None:
    for r0 in range(0, H.shape[0], rows):
        H[r0 : r0 + rows].triu_(r0)  # row r0 + i keeps columns >= r0 + i


def all_finite(t: torch.Tensor, rows: int = 1024) -> bool:
    """torch.isfinite(t).all(), a block of rows at a time (no full-size bool mask)."""
    return all(bool(torch.isfinite(t[r : r + rows]).all()) for r in range(0, t.shape[0], rows))


#: columns from which chol_inverse_upper works in place (LAPACK through scipy) and
#: hessian_update casts its input CAST_CHUNK elements at a time
IN_PLACE_MIN = 8192
CAST_CHUNK = 1 << 22


def _torch_steps(Hd: torch.Tensor) -> torch.Tensor | None:
    L, info = torch.linalg.cholesky_ex(Hd)
    if int(info):
        return None
    Hinv = torch.cholesky_inverse(L)
    del L
    U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
    return None if int(info) else U


def _lapack_in_place(Hd: torch.Tensor, clean: bool = True) -> torch.Tensor | None:
    """Hd (C order, symmetric) becomes the upper factor U of Hd^-1 in its own memory: seen in
    Fortran order it is Hd^T = Hd, whose lower Cholesky factor of the inverse, read back in C
    order, is U (zeros below the diagonal; with `clean=False` Hd's strict lower triangle is
    left as it was: every step reads and writes the upper one only)."""
    from scipy.linalg import lapack

    a = Hd.numpy().T  # the same memory, Fortran-contiguous
    potrf = lapack.get_lapack_funcs("potrf", (a,))
    potri = lapack.get_lapack_funcs("potri", (a,))
    c, info = potrf(a, lower=1, overwrite_a=1, clean=0)
    if info:
        return None
    c, info = potri(c, lower=1, overwrite_c=1)
    if info:
        return None
    c, info = potrf(c, lower=1, overwrite_a=1, clean=int(clean))
    if info or not np_shares(c, a):
        return None
    return Hd


def np_shares(x, y) -> bool:
    import numpy as np

    return bool(np.shares_memory(x, y))


def one_thread_when_small(fn: Callable[..., T]) -> Callable[..., T]:
    """Run `fn(W, ...)` on one CPU thread when W is small (see `_ONE_THREAD_MAX`)."""

    @functools.wraps(fn)
    def run(W: torch.Tensor, *args, **kwargs):
        small = W.device.type == "cpu" and W.numel() <= _ONE_THREAD_MAX
        with _threads(1 if small else None):
            return fn(W, *args, **kwargs)

    return run
