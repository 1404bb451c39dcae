"""2:4 sparse weights on NVIDIA sparse tensor cores: torch's semi-structured sparse tensors.

A Linear whose weight is exactly 2:4 (`compress.numerics.sparsity`: at most 2 nonzeros in
every 4 consecutive inputs of a row) can hold it as `torch.sparse.to_sparse_semi_structured`
(half the values plus 2-bit indices) and multiply with cuSPARSELt or CUTLASS kernels, the way
PyTorch's semi-structured sparsity tutorial does (`linear.weight = nn.Parameter(...)`).
That needs a CUDA GPU of compute capability >= 8.0 and float16 / bfloat16 weights; anywhere
else (CPU included) no kernel runs the pattern and the zeros are multiplied like any weight.

`semi_structured_support` says whether the device can, and why not; `plan_semi_structured`
lists which Linears qualify (pure, runs on CPU); `apply_semi_structured` converts them.
The kernel choice (`compress.profile.kernels.choose_policy`) times the converted model against
the dense one and records the choice in the policy that the profiling processes replay.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

DTYPES = (torch.float16, torch.bfloat16)
MIN_CAPABILITY = (8, 0)


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    return getattr(torch, str(dtype).removeprefix("torch."))


def _forced_cutlass() -> bool:
    cls = getattr(torch.sparse, "SparseSemiStructuredTensor", None)
    return bool(getattr(cls, "_FORCE_CUTLASS", False))


def backend() -> str:
    """The backend the conversion uses: cuSPARSELt when torch has it (and CUTLASS is not
    forced through `SparseSemiStructuredTensor._FORCE_CUTLASS`), else CUTLASS."""
    cslt = getattr(getattr(torch.backends, "cusparselt", None), "is_available", None)
    return "cuSPARSELt" if cslt is not None and cslt() and not _forced_cutlass() else "CUTLASS"


def _sparse_class() -> Any:
    name = "CUSPARSELT" if backend() == "cuSPARSELt" else "CUTLASS"
    return getattr(torch.sparse, f"SparseSemiStructuredTensor{name}", None)


def _to_semi_structured(w: torch.Tensor) -> torch.Tensor:
    """`torch.sparse.to_sparse_semi_structured`, or the CUTLASS class directly where torch has
    no cuSPARSELt (the function would pick cuSPARSELt unless CUTLASS is forced globally)."""
    if backend() == "CUTLASS" and not _forced_cutlass():
        return _sparse_class().from_dense(w)
    return torch.sparse.to_sparse_semi_structured(w)


def semi_structured_support(
    device: str | torch.device, dtype: torch.dtype | str | None = None
) -> tuple[bool, str]:
    """(True, what runs it) when torch's semi-structured 2:4 kernels run on `device` for
    weights of `dtype` (None: whether the device can at all); else (False, why not)."""
    dev = torch.device(device)
    dt = _dtype(dtype)
    if dev.type != "cuda":
        return False, (
            f"not CUDA: device is {dev.type}; torch runs 2:4 semi-structured sparsity only on "
            "CUDA GPUs (no CPU kernel), so the zeros are multiplied like any weight"
        )
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return False, f"torch {torch.__version__} lacks torch.sparse.to_sparse_semi_structured"
    if not torch.cuda.is_available():
        return False, "not CUDA: torch sees no CUDA device"
    cap = tuple(torch.cuda.get_device_capability(dev))
    if cap < MIN_CAPABILITY:
        return False, (
            f"compute capability {cap[0]}.{cap[1]} < 8.0: sparse tensor cores start with Ampere"
        )
    if dt is not None and dt not in DTYPES:
        return False, (
            f"dtype {str(dt).removeprefix('torch.')} is not float16/bfloat16 (the semi-"
            "structured kernels this uses take those)"
        )
    what = str(dt).removeprefix("torch.") if dt is not None else "float16/bfloat16"
    return True, (
        f"torch {torch.__version__} semi-structured 2:4 ({backend()}) on sm_{cap[0]}{cap[1]}, "
        f"{what}"
    )


def shape_refusal(shape: tuple[int, ...], dtype: torch.dtype | str) -> str | None:
    """Why the semi-structured kernel refuses a weight of `shape` [out, in] and `dtype` (torch's
    minimum size and multiple-of constraints for the backend), or None when it takes it."""
    dt = _dtype(dtype)
    cls = _sparse_class()
    limits = getattr(cls, "_DTYPE_SHAPE_CONSTRAINTS", None)
    if len(shape) != 2:
        return f"weight is {len(shape)}-D, the kernel takes 2-D"
    if limits is None:  # this torch keeps no table: the conversion itself decides
        return None
    if dt not in limits:
        return f"dtype {str(dt).removeprefix('torch.')} not supported by the {backend()} kernel"
    rmin, cmin = limits[dt].sparse_min_rows, limits[dt].sparse_min_cols
    m, n = shape
    if m < rmin or m % rmin or n < cmin or n % cmin:
        return f"shape {m}x{n}: {backend()} needs both sides >= and a multiple of ({rmin}, {cmin})"
    return None


def plan_semi_structured(model: nn.Module) -> tuple[list[str], dict[str, str]]:
    """Which Linears could hold their weight semi-structured: (names, {name: why not}) for
    every Linear whose weight has zeros. Pure: looks at the weights only (runs on CPU)."""
    from compress.numerics.sparsity import satisfies

    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    ok: list[str] = []
    skipped: dict[str, str] = {}
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear) or is_semi_structured(m.weight):
            continue
        w = m.weight
        if not bool((w == 0).any()):
            continue
        why = None
        if not satisfies(w, 2, 4):
            why = "weight is not 2:4 (some run of 4 inputs has more than 2 nonzeros)"
        elif _dtype(w.dtype) not in DTYPES:
            why = f"dtype {str(w.dtype).removeprefix('torch.')} is not float16/bfloat16"
        elif uses.get(id(w), 0) > 1:
            why = "weight is shared (tied) with another module"
        else:
            why = shape_refusal(tuple(w.shape), w.dtype)
        if why:
            skipped[name] = why
        else:
            ok.append(name)
    return ok, skipped


def is_semi_structured(t: Any) -> bool:
    cls = getattr(torch.sparse, "SparseSemiStructuredTensor", None)
    return cls is not None and isinstance(t, cls)


def apply_semi_structured(
    model: nn.Module,
    device: str | torch.device,
    *,
    names: list[str] | None = None,
    skipped: dict[str, str] | None = None,
) -> list[str]:
    """Convert every Linear whose weight is exactly 2:4 (or those of `names` that still
    qualify) to a semi-structured sparse weight in place; returns the converted names.

    Raises RuntimeError naming the reason when the device has no such kernel (CPU, compute
    capability < 8.0, torch without it). Layers the kernel refuses (dtype, shape, tied
    weights, torch's own error) stay dense; their reasons go into `skipped` and the log.
    """
    ok, why = semi_structured_support(device)
    if not ok:
        raise RuntimeError(f"semi-structured 2:4 kernels unavailable: {why}")
    plan, refused = plan_semi_structured(model)
    if names is not None:
        wanted = set(names)
        plan = [n for n in plan if n in wanted]
        refused = {n: r for n, r in refused.items() if n in wanted}
        refused.update(
            {n: "not a 2:4 Linear in this model" for n in wanted - set(plan) - set(refused)}
        )
    done: list[str] = []
    for name in plan:
        lin = model.get_submodule(name)
        try:
            with torch.no_grad():
                w = lin.weight.detach().contiguous()  # on its own device (CUDA, or refused)
                lin.weight = nn.Parameter(_to_semi_structured(w), requires_grad=False)
        except (RuntimeError, ValueError, NotImplementedError) as e:
            refused[name] = (
                f"torch refused it: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            )
            continue
        done.append(name)
    for name, reason in refused.items():
        log.info("semi-structured 2:4: %s left dense (%s)", name, reason)
    if skipped is not None:
        skipped.update(refused)
    return done


def semi_structured_layers(model: nn.Module) -> list[str]:
    """The Linears whose weight is held semi-structured now."""
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and is_semi_structured(m.weight)
    ]


def in_use(model: nn.Module) -> str | None:
    """One line for a measurement context when sparse kernels run in `model`, else None."""
    names = semi_structured_layers(model)
    if not names:
        return None
    total = sum(isinstance(m, nn.Linear) for m in model.modules())
    return (
        f"torch semi-structured 2:4 sparse kernels ({backend()}) run {len(names)} of the "
        f"{total} Linear layers"
    )
