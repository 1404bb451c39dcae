"""One way to pick modules: class name, exact module name or `re:` regex, minus `ignore`."""

from __future__ import annotations

import logging
import re

import torch
from torch import nn

from compress.errors import BadInput, ReleaseFailed, did_you_mean

log = logging.getLogger(__name__)


def matches(pattern: str, name: str, module: nn.Module) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return pattern == name or pattern == type(module).__name__


def select(
    model: nn.Module, targets: list[str], ignore: list[str], *, stage: str = "stage"
) -> dict[str, nn.Module]:
    """Modules matched by any target and by no ignore entry, in model order.

    A target that matches nothing is an error (a typo would otherwise silently do nothing);
    an ignore entry that matches nothing is only logged.
    """
    named = [(n, m) for n, m in model.named_modules() if n]
    for field_name, patterns in (("targets", targets), ("ignore", ignore)):
        for p in patterns:
            if p.startswith("re:"):
                try:
                    re.compile(p[3:])
                except re.error as e:
                    raise BadInput(
                        f"{stage}.{field_name}: '{p}' is not a valid regex ({e})."
                    ) from None
            if any(matches(p, n, m) for n, m in named):
                continue
            if field_name == "ignore":
                log.info("%s.ignore entry %r matches no module", stage, p)
                continue
            words = sorted({type(m).__name__ for _, m in named} | {n for n, _ in named})
            raise BadInput(
                f"{stage}.targets: '{p}' matches no module of this model{did_you_mean(p, words)}.",
                fix="Use a class name (e.g. Linear), an exact module name (e.g. lm_head) or "
                "'re:<regex>' on module names.",
            )
    return {
        n: m
        for n, m in named
        if any(matches(p, n, m) for p in targets) and not any(matches(p, n, m) for p in ignore)
    }


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def cast_float_parts(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast floating parameters and persistent buffers; leave derived buffers (rotary
    inv_freq, which HF keeps in float32 on purpose), integer storage and already quantized
    modules (they keep their own compute dtype and cast activations at their boundary)."""
    quantized = [m for m in model.modules() if getattr(m, "kind", None)]
    inside = {id(x) for q in quantized for x in q.modules()}
    for module in model.modules():
        if id(module) in inside:
            continue
        for _, p in module.named_parameters(recurse=False):
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
        skip = getattr(module, "_non_persistent_buffers_set", set())
        for name, b in module.named_buffers(recurse=False):
            if b is not None and b.is_floating_point() and name not in skip and b.dtype != dtype:
                module._buffers[name] = b.to(dtype)


def linears(
    model: nn.Module, targets: list[str], ignore: list[str], *, stage: str
) -> dict[str, nn.Linear]:
    """The nn.Linear layers `targets` minus `ignore` select; a StageFailed if there are none."""
    from compress.errors import BadInput

    chosen = {
        n: m
        for n, m in select(model, targets, ignore, stage=stage).items()
        if isinstance(m, nn.Linear)
    }
    if not chosen:
        raise BadInput(
            f"{stage}: targets {targets} (minus ignore {ignore}) match no nn.Linear layer.",
            fix="Target Linear layers, e.g. targets: [Linear].",
        )
    return chosen


def select_linears(
    model: nn.Module,
    targets: list[str],
    ignore: list[str],
    *,
    stage: str,
    group_size: int | None = None,
    bits: int | None = None,
    divisor: tuple[str, int, str] | None = None,
) -> dict[str, nn.Linear]:
    """The nn.Linear layers a weight stage will touch, checked BEFORE anything changes: at
    least one layer, `group_size` (or `divisor`: field text, value, fix) divides every layer's
    input features (per channel at 2-4 `bits`: some int4 container group does), and no weight
    is NaN/inf. A failed check leaves the model exactly as it was."""
    import torch

    from compress._config import INT4_GROUP_SIZES
    from compress.errors import BadInput
    from compress.numerics.grid import container_group

    def listed(bad: list[str]) -> str:
        return f"{len(bad)} layer(s): {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}"

    chosen = linears(model, targets, ignore, stage=stage)
    if group_size and divisor is None:
        divisor = (
            f"group_size {group_size}",
            group_size,
            "Pick a group size that divides them (e.g. 32 or 64 for SmolLM2's 576), "
            "or add those layers to ignore; after structured pruning, remove MLP channels in "
            f"steps of the group size (structured.mlp_multiple: {group_size}).",
        )
    if divisor:
        what, d, fix = divisor
        bad = [f"{n} (in_features {m.in_features})" for n, m in chosen.items() if m.in_features % d]
        if bad:
            raise BadInput(
                f"{stage}.{what} does not divide the input features of {listed(bad)}.", fix=fix
            )
    elif bits is not None and bits <= 4:
        bad = [
            f"{n} (in_features {m.in_features})"
            for n, m in chosen.items()
            if container_group(m.in_features) is None
        ]
        if bad:
            raise BadInput(
                f"{stage} per-channel int{bits} is stored in int4 groups of "
                f"{list(INT4_GROUP_SIZES)}, none of which divides the input features of "
                f"{listed(bad)}.",
                fix="Add those layers to ignore.",
            )
    bad = [  # a model streamed from disk (meta weights) is checked layer by layer as it loads
        n
        for n, m in chosen.items()
        if m.weight.device.type != "meta" and not torch.isfinite(m.weight).all()
    ]
    if bad:
        raise ReleaseFailed(f"{stage}: non-finite weights in layer(s) {', '.join(bad[:5])}.")
    return chosen
