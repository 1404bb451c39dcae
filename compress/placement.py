"""Where a model's parts run when several GPUs are visible (`--device cuda`).

`plan` asks accelerate's `infer_auto_device_map` for a placement of whole decoder layers (a
layer is never split) over the GPUs, filling the first before the next: a model that fits on
one GPU stays on it (spreading a small model only adds transfers), a larger one spills onto
the next. A part placed on "cpu" or "disk" means the model does not fit the GPUs: refused
with the numbers, pointing at `--max-memory` (layer by layer from disk). `place` moves the
model (accelerate's `dispatch_model` when it spans several GPUs: inputs enter on the first,
activations move between GPUs at layer boundaries, outputs come back to the first) and
`describe` says what runs where, for the log and the report (`run.placement`).

The planning and the description are plain functions of the model and the budgets, tested on
the CPU with made-up budgets; moving weights onto several GPUs needs them (a `gpu` test).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from compress.errors import BadInput

log = logging.getLogger(__name__)

#: share of each GPU's free memory left for activations, the KV cache and the methods'
#: working sets (GPTQ's Hessians, calibration inputs)
HEADROOM = 0.25


def gpu_budgets(headroom: float = HEADROOM) -> dict[int, int]:
    """{GPU index: bytes of weights it may take}: its free memory less the headroom."""
    import torch

    return {
        i: int(torch.cuda.mem_get_info(i)[0] * (1 - headroom))
        for i in range(torch.cuda.device_count())
    }


def _layer_classes(model: Any) -> list[str]:
    from compress.calibration.calibrate import decoder_layers

    _, layers = decoder_layers(model)
    return sorted({type(layer).__name__ for layer in layers})


def plan(model: Any, budgets: dict[int, int]) -> dict[str, int]:
    """{module name: GPU index} for `model` within `budgets` (bytes per GPU); BadInput when
    some part fits on none of them."""
    import warnings

    from accelerate import infer_auto_device_map

    with warnings.catch_warnings():  # planning with budgets of GPUs this host may lack
        warnings.simplefilter("ignore")
        dmap = infer_auto_device_map(
            model,
            max_memory={**budgets, "cpu": 0},
            no_split_module_classes=_layer_classes(model),
        )
    off = [name for name, dev in dmap.items() if not isinstance(dev, int)]
    if off:
        from compress.profile.memory import weight_bytes

        total = weight_bytes(model)
        room = ", ".join(f"cuda:{i} {b / 2**30:.1f} GiB" for i, b in budgets.items())
        raise BadInput(
            f"--device cuda: the model's weights ({total / 2**30:.1f} GiB) do not fit on the "
            f"visible GPUs ({room} usable, {HEADROOM:.0%} of their free memory kept for "
            f"activations); {len(off)} parts would be left off, from {off[0]}.",
            fix="Make more GPUs visible (CUDA_VISIBLE_DEVICES), or run layer by layer from "
            "disk with --max-memory.",
        )
    return dict(dmap)


def describe(model: Any, dmap: dict[str, int]) -> list[dict[str, Any]]:
    """Per GPU: its decoder layers (indices), its other modules and its weight bytes."""
    from compress.calibration.calibrate import decoder_layers

    prefix, layers = decoder_layers(model)
    out: dict[int, dict[str, Any]] = {}
    seen: set[int] = set()  # a tied weight (embedding = lm_head) counted once
    for name, dev in dmap.items():
        d = out.setdefault(dev, {"device": f"cuda:{dev}", "decoder_layers": [], "modules": [],
                                 "weight_bytes": 0})  # fmt: skip
        mod = model.get_submodule(name)
        for p in mod.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                d["weight_bytes"] += p.numel() * p.element_size()
        if name == "" or name == prefix:  # the whole model, or every layer, on one GPU
            d["decoder_layers"] += list(range(len(layers)))
            if name == "":
                d["modules"].append("the rest of the model")
        elif name.startswith(prefix + "."):
            d["decoder_layers"].append(int(name[len(prefix) + 1 :].split(".")[0]))
        else:
            d["modules"].append(name)
    return [out[k] for k in sorted(out)]


def summary(placement: list[dict[str, Any]]) -> str:
    """'cuda:0 layers 0-13 + model.embed_tokens (1.2 GiB); cuda:1 layers 14-27 (...)'."""
    parts = []
    for d in placement:
        ls = sorted(set(d["decoder_layers"]))
        what = [f"layers {ls[0]}-{ls[-1]}" if len(ls) > 1 else f"layer {ls[0]}"] if ls else []
        parts.append(
            f"{d['device']} " + " + ".join(what + d["modules"])
            + f" ({d['weight_bytes'] / 2**30:.2f} GiB)"
        )  # fmt: skip
    return "; ".join(parts)


def notes(run: dict[str, Any]) -> list[str]:
    """The report's line on what ran where, for a run over several GPUs."""
    placement = run.get("placement")
    if not placement:
        return []
    return [
        f"Placed over {len(placement)} GPU(s) by accelerate's device map (whole decoder layers, "
        f"the first GPU filled first): {summary(placement)}; variants use the same map."
    ]


def place(model: Any, budgets: dict[int, int] | None = None) -> list[dict[str, Any]]:
    """Move `model` onto the visible GPUs (see the module docstring); what runs where."""
    dmap = plan(model, gpu_budgets() if budgets is None else budgets)
    placement = describe(model, dmap)
    if {d for d in dmap.values()} == {0}:
        model.to("cuda:0")
    else:
        from accelerate import dispatch_model

        dispatch_model(model, device_map=dmap, main_device="cuda:0")
    log.info("placed on the GPUs: %s", summary(placement))
    return placement


def spans_gpus(model: Any) -> bool:
    """Whether `model` was dispatched over several GPUs (accelerate's device map)."""
    dmap = getattr(model, "hf_device_map", None) or {}
    return len(set(dmap.values())) > 1


def copy_model(model: Any) -> Any:
    """A variant's copy of the baseline: a deep copy, re-dispatched with the baseline's device
    map when the baseline spans several GPUs (accelerate's hooks are not copied, they are set
    anew on the copy's own modules)."""
    if not spans_gpus(model):
        return copy.deepcopy(model)
    from accelerate import dispatch_model
    from accelerate.hooks import remove_hook_from_submodules

    dup = copy.deepcopy(model)
    remove_hook_from_submodules(dup)
    dispatch_model(dup, device_map=dict(model.hf_device_map), main_device="cuda:0")
    return dup


def sync_all() -> None:
    """Wait for every visible GPU (a model spread over several finishes on the last)."""
    import torch

    for i in range(torch.cuda.device_count()):
        torch.cuda.synchronize(i)
