"""SparseGPT (Frantar & Alistarh 2023) as a pure tensor function: no modules, any device.

Same machinery as GPTQ (compress/numerics/hessian.py): with U the upper Cholesky factor of the
damped H^-1, columns are visited left to right in blocks; inside a block the mask is chosen
from the OBS saliency w^2 / U_jj^2 (unstructured: the lowest `sparsity` fraction of the block,
over all rows, as the reference; n:m: per row, every m columns), each pruned weight's error
(w / U_jj) is spread over the row's later columns, and later blocks get the lazy update.
"""

from __future__ import annotations

import math

import torch

from compress.numerics.hessian import chol_inverse_upper, one_thread_when_small


@one_thread_when_small
def sparsegpt_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float | None = 0.5,
    nm: tuple[int, int] | None = None,
    block_size: int = 128,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prune W [out, in] against the input Hessian H [in, in] (see gptq.hessian_update).

    Returns (new float32 weights with the pruned ones exactly 0, bool mask True = pruned,
    per-row output error (w - w') H (w - w')^T with the undamped H). Dead inputs (diag H == 0)
    get a zero weight column, as in GPTQ.
    """
    rows, cols = W.shape
    if H.shape != (cols, cols):
        raise ValueError(f"H is {tuple(H.shape)}, expected ({cols}, {cols}) for W {tuple(W.shape)}")
    if nm is None and (sparsity is None or not 0 <= sparsity < 1):
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if nm is not None and cols % nm[1]:
        raise ValueError(f"{nm[0]}:{nm[1]} needs in_features divisible by {nm[1]}, got {cols}")
    dev = W.device
    H0 = H.to(dev, torch.float32)
    W0 = W.detach().to(torch.float32)
    H = H0.clone()
    Wt = W0.t().contiguous()  # [cols, rows]: a column of W is a contiguous row here
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    Wt[dead] = 0.0
    U, _ = chol_inverse_upper(H, damp)
    del H

    bs = max(1, block_size)
    if nm is not None:
        bs = math.ceil(bs / nm[1]) * nm[1]
    Qt = torch.empty_like(Wt)
    Mt = torch.zeros_like(Wt, dtype=torch.bool)
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        W1 = Wt[i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        d1 = torch.diagonal(U1)
        M1 = Mt[i1:i2]
        Err1 = torch.empty_like(W1)
        if nm is None:
            sal = (W1.square() / d1[:, None].square()).flatten()
            k = int(sal.numel() * sparsity)
            if k:
                M1.view(-1)[torch.topk(sal, k, largest=False).indices] = True
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                sal = W1[i : i + m].square() / d1[i : i + m, None].square()  # [m, rows]
                drop = torch.topk(sal, m - n, dim=0, largest=False).indices
                M1[i : i + m].scatter_(0, drop, True)
            w = W1[i]
            q = w.masked_fill(M1[i], 0.0)
            Qt[i1 + i] = q
            err = (w - q) / U1[i, i]
            W1[i:].addr_(U1[i, i:], err, alpha=-1.0)
            Err1[i] = err
        if i2 < cols:
            Wt[i2:].addmm_(U[i1:i2, i2:].t(), Err1, alpha=-1.0)

    W_new = Qt.t().contiguous()
    delta = W0 - W_new
    delta[:, dead] = 0.0  # dead inputs never reach the output
    row_error = ((delta @ H0) * delta).sum(1)
    return W_new, Mt.t().contiguous(), row_error
