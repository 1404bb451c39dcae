"""Write a compressed model in the compressed-tensors format (what llm-compressor writes, and
what vLLM and transformers with `compressed-tensors` installed load).

Weight-only models use format `pack-quantized`: each quantized Linear stores
`weight_packed` (its signed integer codes packed into int32 by compressed-tensors' own
`pack_to_int32`), `weight_scale` [out, groups] and `weight_shape`. W8A8 models (smoothquant,
dynamic_int8) use `int-quantized`: the int8 `weight` and `weight_scale` per channel, plus the
input activations each module quantizes at run time (per token and symmetric for
W8A8Linear, per tensor and asymmetric for torch.ao's dynamic linear). `config.json` carries
the `quantization_config`: one scheme per (bits, group size, activations) naming the exact
modules it targets. The grid is

    w = (q - zp) * scale       q, zp integers in the signed range of num_bits

Our symmetric grids (zero == 0) map with the same codes; a grid whose float zero is a whole
number k of steps (zero == k * scale, e.g. 2/3-bit codes in int4 containers) maps onto the
SYMMETRIC grid with codes v + k, exactly. Asymmetric weight schemes (integer zero points)
are never written: transformers 5.24 with compressed-tensors 0.20 refuses the packed zero
points compressed-tensors itself writes (a shape check before decompression). A min/max grid
with a free float zero (GGUF Q4_1-like) has no exact form and is refused with that reason.
A tied int8 lm_head is written as the float table it dequantizes to (the embedding reads
it too), listed in `ignore`. Scales are written in float32 (our bf16 scales exactly), so
the decompressed weights are ours bit for bit.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.errors import ExportError
from compress.export import gguf_blocks as gb

log = logging.getLogger(__name__)

CT_KINDS = (
    "int4_linear",
    "int8_linear",
    "int8_embedding",
    "w8a8_linear",
    "dynamic_int8_linear",
)
#: activations quantized at run time, as each W8A8 module does it
ACTIVATIONS = {
    "w8a8_linear": ("token", True),  # int8 per token, symmetric (torch._int_mm path)
    "dynamic_int8_linear": ("tensor", False),  # uint8 per tensor, asymmetric (fbgemm)
}


def _grid(module: nn.Module) -> tuple[gb.Grid, int]:
    from compress.export.gguf_model import int4_grid

    if module.kind == "int4_linear":
        return int4_grid(module), 4
    t = module.export()
    return gb.grid_from_int8(t["qweight"], t["scale"]), 8


def _symmetric_codes(grid: gb.Grid, bits: int, name: str) -> tuple[torch.Tensor, int | None]:
    """Codes q with w == q * scale (zero folded in as a whole number of steps per group), and
    the group size (None: one scale per channel). Refuses grids that have no such form."""
    k = gb.integer_offset(grid)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if k is not None:
        g = grid.group_size
        q = grid.values + k.to(torch.int16).repeat_interleave(g, dim=1)
        if int(q.min()) >= lo and int(q.max()) <= hi:
            return q.to(torch.int8), None if grid.scale.shape[1] == 1 else g
    raise ExportError(
        f"{name}: an asymmetric grid with a free float zero (min/max, like GGUF Q4_1) has "
        "no exact compressed-tensors form.",
        fix="Quantize with symmetric: true for compressed-tensors, or export --format gguf.",
    )


def compressed_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict, list[str]]:
    """(tensors, {scheme key: [module names]}, ignored module names)."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    tensors: dict[str, torch.Tensor] = {}
    schemes: dict[tuple, list[str]] = {}
    tied = {
        id(m.weight_source): n for n, m in model.named_modules() if _kind(m) == "int8_embedding"
    }
    ignored: list[str] = []
    quant_names = {n for n, m in model.named_modules() if _kind(m)}
    for name, module in model.named_modules():
        kind = _kind(module)
        if kind is None:
            continue
        if kind not in CT_KINDS:
            raise ExportError(
                f"a {kind} module ({name}) has no compressed-tensors mapping here; supported: "
                "int4 / int8 weight-only (rtn, gptq, awq), W8A8 (smoothquant, dynamic_int8) "
                "and float weights."
            )
        if kind == "int8_embedding":
            grid, _ = _grid(module.weight_source)
            tensors[f"{name}.weight"] = grid.dequantize().contiguous()
            continue
        grid, bits = _grid(module)
        act = ACTIVATIONS.get(kind)
        if id(module) in tied:
            ignored.append(name)  # the tied lm_head: the embedding's float table serves both
            continue
        codes, group = _symmetric_codes(grid, bits, name)
        schemes.setdefault((bits, group, True, act), []).append(name)
        if act is None:
            tensors[f"{name}.weight_packed"] = pack_to_int32(codes, bits)
            tensors[f"{name}.weight_shape"] = torch.tensor(list(codes.shape))
        else:  # int-quantized: the int8 codes as they are
            tensors[f"{name}.weight"] = codes.contiguous()
        tensors[f"{name}.weight_scale"] = grid.scale.float().contiguous()
        if getattr(module, "bias", None) is not None:
            tensors[f"{name}.bias"] = module.bias.detach().float()
    seen: set[int] = set()
    for name, p in model.named_parameters():
        owner = name.rsplit(".", 1)[0]
        if owner in quant_names or p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        tensors.setdefault(name, p.detach().float().contiguous())
    return tensors, schemes, ignored


def _kind(m: nn.Module) -> str | None:
    return getattr(m, "kind", None)


def quantization_config(schemes: dict, ignored: list[str]) -> dict:
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
    )

    groups = {}
    w8a8 = {key[3] is not None for key in schemes}
    if len(w8a8) > 1:
        raise ExportError(
            "one compressed-tensors model holds weight-only layers or W8A8 layers, not both "
            "(its format is pack-quantized or int-quantized)."
        )
    for i, ((bits, group, sym, act), names) in enumerate(sorted(schemes.items(), key=str)):
        args = QuantizationArgs(
            num_bits=bits,
            type="int",
            symmetric=sym,
            strategy="channel" if group is None else "group",
            group_size=group,
        )
        inputs = None
        if act is not None:
            inputs = QuantizationArgs(
                num_bits=8, type="int", symmetric=act[1], dynamic=True, strategy=act[0]
            )
        groups[f"group_{i}"] = QuantizationScheme(
            targets=sorted(names), weights=args, input_activations=inputs
        )
    qc = QuantizationConfig(
        config_groups=groups,
        format="int-quantized" if w8a8 == {True} else "pack-quantized",
        quantization_status="compressed",
        ignore=sorted(set(ignored)),
    )
    return qc.model_dump(mode="json", exclude_none=True)


def write_compressed_tensors(handle: Any, dest: Path) -> dict[str, Any]:
    """Write `handle`'s model as a compressed-tensors folder at `dest` (atomically)."""
    from safetensors.torch import save_file

    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise ExportError(
            "compressed-tensors export needs the 'compressed-tensors' package.",
            fix="pip install compressed-tensors",
        ) from None
    model = handle.model
    tensors, schemes, ignored = compressed_state(model)
    if not schemes:
        raise ExportError("the model has no int4/int8 weight-only layers to write as such.")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        cfg = model.config.to_dict()
        cfg["quantization_config"] = quantization_config(schemes, ignored)
        cfg["dtype"] = "float32"
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if handle.tokenizer is not None:
            handle.tokenizer.save_pretrained(tmp)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(f.stat().st_size for f in dest.iterdir())
    return {
        "format": "compressed-tensors",
        "path": str(dest),
        "file_bytes": size,
        "schemes": {
            f"{b}-bit {'channel' if g is None else f'group {g}'} {'sym' if s else 'asym'}"
            + (f" + int8 activations per {a[0]}" if a else ""): len(n)
            for (b, g, s, a), n in schemes.items()
        },
        "ignored": sorted(set(ignored)),
    }
