"""Per-group statistics inside one decoder layer, shared by GPTQ, SparseGPT and Wanda.

Inside each decoder layer (walked by calibrate.sequential) the targeted Linears are split
into groups that read the same input tensor (Llama: q/k/v, o, gate/up, down), in the order
they run. For each group a statistic of its input is accumulated over every calibration chunk
(GPTQ and SparseGPT: the Hessian H = 2/n sum x^T x; Wanda: the per-feature sum of squares),
then the method's `solve` rewrites the group's weights.

"True sequential" (default, as the GPTQ and SparseGPT reference code): each group's statistic
is collected on inputs produced by the layer with every earlier group already rewritten; runs
that only need a group's inputs stop right after that group's first Linear. Otherwise one pass
collects every group's statistic from the layer as it was.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from compress.calibration.calibrate import (
    CalibrationData,
    LayerContext,
    StopForward,
    decoder_layers,
    sequential,
)
from compress.errors import BadInput, StageFailed
from compress.stream.heap import trim_heap

log = logging.getLogger(__name__)

#: update(state, x, n) -> (state, n + rows of x): folds one batch of inputs into a statistic
Update = Callable[[Any, torch.Tensor, int], tuple[Any, int]]
#: solve(ctx, sub_names, state, n_rows): rewrites the group's Linears
Solve = Callable[[LayerContext, list[str], Any, int], None]


def square_sum_update(
    acc: torch.Tensor | None, x: torch.Tensor, n: int
) -> tuple[torch.Tensor, int]:
    """Running mean of x_j^2 per input feature (float32): Wanda's ||X_j||^2 / n."""
    x = x.detach().reshape(-1, x.shape[-1]).float()
    m = x.shape[0]
    if acc is None:
        acc = torch.zeros(x.shape[-1], dtype=torch.float32, device=x.device)
    if m == 0:
        return acc, n
    total = n + m
    acc.mul_(n / total).add_(x.square().sum(0), alpha=1.0 / total)
    return acc, total


def by_decoder_layer(
    model: nn.Module, chosen: dict[str, nn.Linear], stage: str
) -> dict[int, dict[str, nn.Linear]]:
    """{layer index: {name inside the layer: Linear}}; Linears outside the decoder layers are
    refused (the calibration loop only walks the layers)."""
    prefix, _ = decoder_layers(model)
    outside = [n for n in chosen if not n.startswith(prefix + ".")]
    if outside:
        raise BadInput(
            f"{stage} only rewrites Linears inside the decoder layers ({prefix}.N); "
            f"{len(outside)} targeted layer(s) lie outside: {', '.join(outside[:5])}.",
            fix="Add them to ignore (and quantize lm_head with an rtn stage, e.g. bits 8).",
        )
    out: dict[int, dict[str, nn.Linear]] = {}
    for n, m in chosen.items():
        idx, sub = n[len(prefix) + 1 :].split(".", 1)
        out.setdefault(int(idx), {})[sub] = m
    return out


def groups_by_input(ctx: LayerContext, modules: dict) -> list[list[str]]:
    """Targeted Linears of this layer, in the order they run, grouped by shared input tensor
    (found on one calibration sample)."""
    seen: list[tuple[str, object]] = []

    def hook(name):
        def fn(_m, inp, _out):
            seen.append((name, inp))  # keeps the tensor alive, so identity is meaningful

        return fn

    probe = LayerContext(ctx.index, ctx.name, ctx.layer, [ctx.inputs[0][:1]], ctx.kwargs)
    probe.run({n: hook(n) for n in modules})
    groups: list[list[str]] = []
    last = None
    done: set[str] = set()
    for name, inp in seen:
        if name in done:
            continue
        done.add(name)
        if groups and inp is last:
            groups[-1].append(name)
        else:
            groups.append([name])
        last = inp
    groups += [[n] for n in modules if n not in done]  # never ran: reported as no inputs
    return groups


def collect(ctx: LayerContext, groups: list[list[str]], stop: bool, update: Update) -> dict:
    """{first Linear of each group: (statistic, rows seen)} over every calibration chunk.
    With `stop`, each chunk's forward ends right after the last group's first Linear."""
    acc: dict[str, list] = {g[0]: [None, 0] for g in groups}
    last = groups[-1][0]

    def hook(name):
        def fn(_m, x, _out):
            a = acc[name]
            a[0], a[1] = update(a[0], x, a[1])
            if stop and name == last:
                raise StopForward

        return fn

    hooks = {name: hook(name) for name in acc}
    if not stop:
        ctx.run(hooks)
    else:  # one chunk per run, so a stop ends that chunk only
        for x in ctx.inputs:
            with contextlib.suppress(StopForward):
                LayerContext(ctx.index, ctx.name, ctx.layer, [x], ctx.kwargs).run(hooks)
    return {k: (v[0], v[1]) for k, v in acc.items()}


def solve_groups(
    ctx: LayerContext,
    modules: dict[str, nn.Linear],
    solve: Solve,
    update: Update,
    true_sequential: bool = True,
) -> dict[str, Any]:
    """Collect each group's statistic and `solve` it (see module docstring). Returns timings."""
    t_layer = time.perf_counter()
    groups = groups_by_input(ctx, modules)
    t_collect = t_solve = 0.0
    if true_sequential:
        for g in groups:
            t = time.perf_counter()
            stat, n = collect(ctx, [g], True, update)[g[0]]
            t_collect += time.perf_counter() - t
            t = time.perf_counter()
            solve(ctx, g, stat, n)
            t_solve += time.perf_counter() - t
            del stat
            trim_heap()  # the group's Hessian and solve temporaries, returned to the OS
    else:
        t = time.perf_counter()
        stats = collect(ctx, groups, False, update)
        t_collect += time.perf_counter() - t
        t = time.perf_counter()
        for g in groups:
            solve(ctx, g, *stats.pop(g[0]))
        t_solve += time.perf_counter() - t
    return {
        "layer": ctx.name,
        "groups": [len(g) for g in groups],
        "seconds": time.perf_counter() - t_layer,
        "collect_s": t_collect,
        "solve_s": t_solve,
    }


def run(
    model: nn.Module,
    calibration: CalibrationData,
    by_layer: dict[int, dict[str, nn.Linear]],
    solve: Solve,
    update: Update,
    *,
    true_sequential: bool,
    batch_size: int,
    desc: str,
    after_layer: Callable[[LayerContext], None] | None = None,
) -> list[float]:
    """The whole stage: the shared sequential loop, `solve_groups` on every decoder layer that
    holds targeted Linears (`by_decoder_layer`). Returns seconds per layer."""

    def on_layer(ctx: LayerContext) -> dict[str, Any]:
        mods = by_layer.get(ctx.index)
        if not mods:
            return {}
        rec = solve_groups(ctx, mods, solve, update, true_sequential)
        log.debug(
            "%s %s: %d groups %s, %.1f s (statistics+forwards %.1f s, solves %.1f s)",
            desc,
            ctx.name,
            len(rec["groups"]),
            rec["groups"],
            rec["seconds"],
            rec["collect_s"],
            rec["solve_s"],
        )
        return rec

    records = sequential(
        model, calibration, on_layer, batch_size=batch_size, desc=desc, after_layer=after_layer
    )
    return [round(r.get("seconds", 0.0), 2) for r in records]


def error_summary(errors: dict[str, float], what: str) -> dict[str, Any]:
    """Median, max and worst layer of the per-layer relative output errors a solve measured."""
    errs = sorted(errors.values())
    return {
        "what": what,
        "median": errs[len(errs) // 2],
        "max": errs[-1],
        "worst_layer": max(errors, key=errors.get),
    }


def check_inputs(name: str, stat: torch.Tensor | None, n_rows: int, stage: str) -> None:
    """A group's statistic must have seen rows, all finite."""
    if stat is None or n_rows == 0:
        raise StageFailed(f"{stage}: layer '{name}' received no calibration inputs.")
    from compress.numerics.hessian import all_finite

    if not all_finite(stat):
        raise StageFailed(f"{stage}: non-finite calibration inputs into layer '{name}'.")
