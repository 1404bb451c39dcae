"""The fastest correct execution path for this host, chosen by timing the model itself.

Kernel speed differs between hosts and between decode (a few rows per call) and prefill (many):
on one 2-core Xeon torch's int8 weight-only kernel is 2x faster than an fp32 GEMM for one row
and 2x slower for 128 rows, and bf16 GEMMs are slower than fp32 ones; on an EPYC both were
faster. A single layer timed alone sits in cache and misleads, so choices are made on the whole
model: `choose_policy` times short decode steps and a prefill forward with each candidate, and
keeps a candidate only if its logits agree with the reference configuration's (same result up
to floating-point rounding). The policy is plain JSON (`apply_policy` replays it), so the
evaluation, every profiling process and the report use the same choice.

Knobs: the dtype of the float parts (norms, residual stream, attention: the recipe's compute
dtype or float32), per quantized module kind the path for small calls and for large calls
(`PATHS` on the module class, `compress.quant.modules.set_paths`), and on CUDA whether Linears
with exactly 2:4 sparse float16 / bfloat16 weights run as torch semi-structured sparse tensors
(`compress.profile.sparse_kernels`; policy key `semi_structured`). The in-process model keeps
those weights dense (its evaluation agrees up to rounding, checked by KL like every candidate);
the profiling processes convert them when the policy says `used`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

#: logits of a candidate must stay this close to the reference's (mean KL per token, nats)
MAX_KL = 1e-2


def _kinds(model: nn.Module) -> dict[str, list[nn.Module]]:
    """Quantized modules with execution paths, grouped by kind and weight shape
    ("int8_linear:1536x576" = out x in): one choice per group."""
    out: dict[str, list[nn.Module]] = {}
    for m in model.modules():
        if getattr(m, "kind", None) and hasattr(m, "PATHS"):
            key = f"{m.kind}:{getattr(m, 'out_features', '?')}x{getattr(m, 'in_features', '?')}"
            out.setdefault(key, []).append(m)
    return out


def _float_dtype(model: nn.Module) -> str:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    dt = getattr(emb, "out_dtype", None) or getattr(getattr(emb, "weight", None), "dtype", None)
    return str(dt or torch.float32).removeprefix("torch.")


def _set_float_dtype(model: nn.Module, dtype: str) -> None:
    """Residual stream and small float parts in `dtype`; float Linear/Embedding weights keep
    their storage dtype (no memory added) and cast at their boundary."""
    from compress.targets import cast_float_parts

    dt = getattr(torch, dtype)
    keep = (nn.Linear, nn.Embedding)
    saved = {id(p): p.dtype for m in model.modules() if isinstance(m, keep) for p in m.parameters()}
    cast_float_parts(model, dt)
    for m in model.modules():
        if isinstance(m, keep):
            for p in m.parameters(recurse=False):
                if p.dtype != saved[id(p)]:
                    p.data = p.data.to(saved[id(p)])
            _boundary_cast(m, dt)
        elif hasattr(m, "out_dtype"):  # Int8Embedding
            m.out_dtype = dt


def _boundary_cast(module: nn.Module, dt: torch.dtype) -> None:
    for h in getattr(module, "_compress_cast_hooks", []):
        h.remove()
    wdt = module.weight.dtype
    hooks = []
    if wdt != dt:
        if isinstance(module, nn.Linear):
            hooks.append(module.register_forward_pre_hook(lambda m, a: (a[0].to(wdt), *a[1:])))
        hooks.append(module.register_forward_hook(lambda m, a, out: out.to(dt)))
    module._compress_cast_hooks = hooks


def apply_policy(model: nn.Module, policy: dict[str, Any] | None) -> None:
    """Replay a policy from `choose_policy` on a freshly loaded model."""
    from compress.quant.modules import set_paths

    if not policy:
        return
    if policy.get("float_dtype") and policy["float_dtype"] != _float_dtype(model):
        _set_float_dtype(model, policy["float_dtype"])
    kinds = _kinds(model)
    for kind, p in policy.get("paths", {}).items():
        for m in kinds.get(kind, []):
            set_paths(m, p["decode"], p["prefill"], policy["rows_threshold"])
    semi = policy.get("semi_structured")
    if semi and semi.get("used"):
        from compress.profile.sparse_kernels import apply_semi_structured

        device = next(model.parameters()).device
        done = apply_semi_structured(model, device, names=semi["layers"])
        log.info("semi-structured 2:4 sparse weights in %d Linear layers", len(done))


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        from compress.placement import sync_all

        sync_all()


def _best_ms(fn: Callable[[], Any], device: str, repeats: int, warmup: int = 1) -> float:
    """Fastest of `repeats` timed calls: a choice between paths wants each path's speed
    without the interference of other tenants (which only ever adds time)."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        ts.append((time.perf_counter() - t0) * 1000.0)
    return min(ts)


class _Probe:
    """Times one model configuration: decode steps at batch 1 and one prefill forward."""

    def __init__(self, model: nn.Module, ids: torch.Tensor, prefill_ids: torch.Tensor, device):
        self.model, self.ids, self.prefill_ids, self.device = model, ids, prefill_ids, device

    def decode_ms(self, steps: int = 8) -> float:
        out = self.model(input_ids=self.ids, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)

        def step():
            nonlocal past, nxt
            o = self.model(input_ids=nxt, past_key_values=past, use_cache=True)
            past, nxt = o.past_key_values, o.logits[:, -1:].argmax(-1)

        return _best_ms(step, self.device, steps, warmup=2)

    def prefill_ms(self, repeats: int = 3) -> float:
        from compress.profile.latency import _accepts

        extra = {"logits_to_keep": 1} if _accepts(self.model, "logits_to_keep") else {}
        return _best_ms(
            lambda: self.model(input_ids=self.prefill_ids, use_cache=True, **extra),
            self.device,
            repeats,
        )

    def logprobs(self) -> torch.Tensor:
        return F.log_softmax(self.model(input_ids=self.ids).logits.float(), dim=-1)


def _kl(ref: torch.Tensor, cand: torch.Tensor) -> float:
    return float((ref.exp() * (ref - cand)).sum(-1).mean())


def choose_policy(
    model: nn.Module,
    *,
    prompt_tokens: int = 128,
    batch_sizes: list[int] | None = None,
    device: str = "cpu",
    vocab_ids: int = 1000,
) -> dict[str, Any] | None:
    """Time the candidates on this host and apply the fastest agreeing ones to `model`.

    Returns the policy (JSON) with every timing taken, or None when the model has nothing to
    choose (no quantized module with several paths, float parts already float32 and no 2:4
    Linear a semi-structured sparse kernel on this CUDA device could run).
    """
    kinds = _kinds(model)
    start_dtype = _float_dtype(model)
    dtypes = list(dict.fromkeys([start_dtype, "float32"]))
    multi = {k: ms for k, ms in kinds.items() if len(type(ms[0]).PATHS) > 1}
    sparse, sparse_skipped = _sparse_candidates(model, device)
    if len(dtypes) == 1 and not multi and not sparse:
        return None
    threshold = max(batch_sizes or [1])
    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or vocab_ids
    vocab_ids = min(vocab_ids, int(vocab))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_ids, (1, 32), generator=g).to(device)
    prefill_ids = torch.randint(0, vocab_ids, (1, prompt_tokens), generator=g).to(device)
    probe = _Probe(model, ids, prefill_ids, device)
    trials: list[dict[str, Any]] = []
    with torch.inference_mode():
        ref = probe.logprobs()

        def trial(what: str, candidate: str) -> dict[str, Any]:
            kl = _kl(ref, probe.logprobs())
            row = {"what": what, "candidate": candidate, "kl_vs_reference": kl}
            if kl <= MAX_KL:
                row.update(decode_ms=probe.decode_ms(), prefill_ms=probe.prefill_ms())
            else:
                row["rejected"] = f"logits differ from the reference (KL {kl:.3g} > {MAX_KL})"
            trials.append(row)
            return row

        rows = []
        for dt in dtypes:
            _set_float_dtype(model, dt)
            rows.append(trial("float_dtype", dt))
        best_dt = _pick(rows, both=True) or start_dtype
        _set_float_dtype(model, best_dt)
        paths = _choose_paths(multi, threshold, trial)
        semi = (
            _try_semi_structured(model, sparse, sparse_skipped, device, trial, trials)
            if sparse
            else None
        )
    policy = {
        "float_dtype": best_dt,
        "rows_threshold": threshold,
        "paths": paths,
        "trials": trials,
        "method": (
            "whole-model timing on this host before profiling: fastest of 8 batch-1 decode steps "
            f"(32-token context) and of 3 {prompt_tokens}-token prefill forwards per candidate; "
            "float dtype first (sum of relative decode and prefill time), then per module kind "
            "and weight shape"
            " the fastest path for decode calls (<= rows_threshold rows) and for larger calls; "
            "then, on CUDA, 2:4 Linear layers as torch semi-structured sparse tensors against "
            "dense (sum of relative decode and prefill time); "
            f"a candidate whose logits differ from the reference by KL > {MAX_KL} is rejected"
        ),
    }
    if semi is not None:
        policy["semi_structured"] = semi
    log.info("kernel policy: %s", describe(policy))
    return policy


def _choose_paths(
    multi: dict[str, list[nn.Module]], threshold: int, trial: Callable[[str, str], dict]
) -> dict[str, dict[str, str]]:
    """Per quantized module kind, every path timed; the fastest for decode calls and for
    larger calls applied to all modules of that kind and returned."""
    from compress.quant.modules import set_paths

    paths: dict[str, dict[str, str]] = {}
    for kind, ms in multi.items():
        cands = type(ms[0]).PATHS
        rows = []
        for p in cands:
            for m in ms:
                set_paths(m, p, p, threshold)
            rows.append(trial(kind, p))
        paths[kind] = {
            "decode": _pick(rows, key="decode_ms") or cands[0],
            "prefill": _pick(rows, key="prefill_ms") or cands[0],
        }
        for m in ms:
            set_paths(m, paths[kind]["decode"], paths[kind]["prefill"], threshold)
    return paths


def _sparse_candidates(model: nn.Module, device: str) -> tuple[list[str], dict[str, str]]:
    """The Linears a semi-structured 2:4 kernel could run on `device` (none off CUDA)."""
    if torch.device(device).type != "cuda":
        return [], {}
    from compress.profile.sparse_kernels import plan_semi_structured, semi_structured_support

    if not semi_structured_support(device)[0]:
        return [], {}
    return plan_semi_structured(model)


def _try_semi_structured(
    model: nn.Module,
    names: list[str],
    skipped: dict[str, str],
    device: str,
    trial: Callable[[str, str], dict[str, Any]],
    trials: list[dict[str, Any]],
) -> dict[str, Any]:
    """Time the model with its 2:4 Linears dense, then semi-structured; put the dense weights
    back (the profiling processes convert when `used`). The policy's `semi_structured`."""
    from compress.profile.sparse_kernels import (
        apply_semi_structured,
        backend,
        semi_structured_support,
    )

    dense = {n: model.get_submodule(n).weight for n in names}
    rows = [trial("semi_structured", "dense")]
    converted: list[str] = []
    try:
        converted = apply_semi_structured(model, device, names=names, skipped=skipped)
        if converted:
            rows.append(trial("semi_structured", "2:4"))
    except (RuntimeError, ValueError, NotImplementedError) as e:  # the kernel itself refused
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        row = {"what": "semi_structured", "candidate": "2:4", "rejected": f"failed: {first}"}
        trials.append(row)
        rows.append(row)
    finally:
        for n, w in dense.items():
            model.get_submodule(n).weight = w
    used = bool(converted) and _pick(rows, both=True) == "2:4"
    sparse_row = rows[-1] if len(rows) > 1 else None
    if used:
        decided = "faster than dense with logits that agree"
    elif sparse_row is None:
        decided = "no layer could be converted"
    else:
        decided = sparse_row.get("rejected") or "not faster than dense on this host"
    return {
        "used": used,
        "layers": converted,
        "skipped": skipped,
        "backend": backend(),
        "support": semi_structured_support(device)[1],
        "decided": decided,
    }


def _pick(rows: list[dict[str, Any]], key: str = "decode_ms", both: bool = False) -> str | None:
    ok = [r for r in rows if "rejected" not in r]
    if not ok:
        return None
    if both:
        d0, p0 = min(r["decode_ms"] for r in ok), min(r["prefill_ms"] for r in ok)
        return min(ok, key=lambda r: r["decode_ms"] / d0 + r["prefill_ms"] / p0)["candidate"]
    return min(ok, key=lambda r: r[key])["candidate"]


def describe(policy: dict[str, Any] | None) -> str:
    """One line for logs and reports."""
    if not policy:
        return "no choice to make (one execution path)"
    parts = [f"float parts in {policy['float_dtype']}"]
    for kind, p in policy.get("paths", {}).items():
        if p["decode"] == p["prefill"]:
            parts.append(f"{kind}: {p['decode']}")
        else:
            parts.append(
                f"{kind}: {p['decode']} for <= {policy['rows_threshold']} rows (decode), "
                f"{p['prefill']} above (prefill, eval)"
            )
    semi = policy.get("semi_structured")
    if semi:
        n = len(semi["layers"])
        if semi["used"]:
            parts.append(
                f"2:4 semi-structured sparse kernels ({semi['backend']}) on {n} Linear layers"
            )
        else:
            parts.append(f"2:4 Linear layers kept dense ({semi['decided']})")
    return "; ".join(parts)
