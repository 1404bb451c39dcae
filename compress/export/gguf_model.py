"""Write a compressed model as a GGUF file that llama.cpp (and Ollama) load.

The tensor math lives in `gguf_blocks`; this module walks the model, names its tensors the
way llama.cpp does (gguf's own `TensorNameMap`), applies llama.cpp's row order to the query
and key projections (its converter permutes them for its rotary layout; a row permutation
keeps every block of 32 inputs intact, so quantized rows move unchanged), and copies the
tokenizer and model metadata from the GGUF the model was loaded from, with the shapes a
structured-pruning stage changed rewritten from the model's config.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.errors import ExportError
from compress.export import gguf_blocks as gb

log = logging.getLogger(__name__)

#: architectures whose tensor layout this writer knows (HF model_type -> gguf arch name)
ARCHITECTURES = {"llama": "llama"}
#: quantized module kinds with an exact or stated GGUF mapping
GGUF_KINDS = ("int4_linear", "int8_linear", "dynamic_int8_linear", "int8_embedding")
FLOAT_TYPES = {"f16": np.float16, "f32": np.float32}
#: metadata rewritten from the model's config (structured pruning changes them)
_SHAPE_KEYS = (
    "block_count",
    "feed_forward_length",
    "embedding_length",
    "attention.head_count",
    "attention.head_count_kv",
    "rope.dimension_count",
    "vocab_size",
    "context_length",
    "attention.layer_norm_rms_epsilon",
    "rope.freq_base",
    "attention.key_length",
    "attention.value_length",
)


def int4_grid(module: nn.Module) -> gb.Grid:
    """An Int4Linear's grid straight from its kernel layout (no packed round trip)."""
    sz = module.scale_zero
    return gb.grid_from_int4(module.codes(), sz[..., 0].t(), sz[..., 1].t())


def _grid_of(module: nn.Module) -> gb.Grid:
    kind = module.kind
    if kind == "int4_linear":
        return int4_grid(module)
    if kind in ("int8_linear", "dynamic_int8_linear"):
        t = module.export()
        return gb.grid_from_int8(t["qweight"], t["scale"])
    if kind == "int8_embedding":
        return _grid_of(module.weight_source)
    raise ExportError(
        f"a {kind} module has no GGUF mapping; GGUF export supports {', '.join(GGUF_KINDS)} "
        "and float weights (e.g. bitsandbytes NF4 and W8A8 activations do not map)"
    )


def model_tensors(model: nn.Module) -> dict[str, Any]:
    """HF name -> a Grid (quantized) or a float tensor, each stored tensor once."""
    out: dict[str, Any] = {}
    seen: set[int] = set()
    # an int8 embedding reads its tied lm_head's rows: written once, as token_embd
    shared = {
        id(m.weight_source) for m in model.modules() if getattr(m, "kind", "") == "int8_embedding"
    }
    for name, module in model.named_modules():
        if id(module) in shared:
            continue
        if getattr(module, "kind", None):
            out[f"{name}.weight"] = _grid_of(module)
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                out[f"{name}.bias"] = bias.detach()
            continue
        if any(getattr(m, "kind", None) for m in _ancestors(model, name)):
            continue
        for pname, p in module.named_parameters(recurse=False):
            if p.data_ptr() in seen:
                continue  # a tied weight: llama.cpp reuses token_embd as the output
            seen.add(p.data_ptr())
            out[f"{name}.{pname}"] = p.detach()
    return out


def _ancestors(model: nn.Module, name: str) -> list[nn.Module]:
    parts, mods, m = name.split(".") if name else [], [], model
    for p in parts[:-1]:
        m = getattr(m, p)
        mods.append(m)
    return mods


def llama_row_order(n_rows: int, n_head: int) -> torch.Tensor:
    """The row permutation llama.cpp's converter applies to q_proj / k_proj weights."""
    return torch.arange(n_rows).reshape(n_head, 2, n_rows // n_head // 2).transpose(1, 2).flatten()


def _permute(hf_name: str, value: Any, cfg: Any) -> Any:
    if hf_name.endswith("q_proj.weight"):
        n = cfg.num_attention_heads
    elif hf_name.endswith("k_proj.weight"):
        n = cfg.num_key_value_heads
    else:
        return value
    order = llama_row_order(_rows(value), n)
    return value.permute_rows(order) if isinstance(value, gb.Grid) else value[order]


def _rows(value: Any) -> int:
    return value.values.shape[0] if isinstance(value, gb.Grid) else value.shape[0]


def encode_tensor(value: Any, float_type: str) -> tuple[np.ndarray, Any, str, dict]:
    """(data, raw GGUF type or None for a plain float array, how, error)."""
    if isinstance(value, gb.Grid):
        return gb.encode(value)
    t = value.float()
    if t.dim() == 1 or float_type == "f32":
        return t.numpy(), None, "float32", {"max_abs": 0.0, "relative": 0.0}
    data = t.numpy().astype(FLOAT_TYPES[float_type])
    err = (torch.from_numpy(data.astype(np.float32)) - t).abs()
    rel = float(err.norm()) / (float(t.norm()) or 1.0)
    return data, None, float_type, {"max_abs": float(err.max()), "relative": rel}


def _copy_metadata(writer: Any, reader: Any, arch: str) -> None:
    from gguf import GGUFValueType as VT

    skip = {f"{arch}.{k}" for k in _SHAPE_KEYS} | {
        "general.architecture",
        "general.file_type",
        "general.quantization_version",
    }
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in skip:
            continue
        main = field.types[0]
        sub = field.types[-1] if main == VT.ARRAY else None
        writer.add_key_value(key, field.contents(), main, sub)


def _shape_metadata(writer: Any, arch: str, cfg: Any) -> None:
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_uint32(f"{arch}.block_count", cfg.num_hidden_layers)
    writer.add_uint32(f"{arch}.feed_forward_length", cfg.intermediate_size)
    writer.add_uint32(f"{arch}.embedding_length", cfg.hidden_size)
    writer.add_uint32(f"{arch}.attention.head_count", cfg.num_attention_heads)
    writer.add_uint32(f"{arch}.attention.head_count_kv", cfg.num_key_value_heads)
    writer.add_uint32(f"{arch}.rope.dimension_count", head_dim)
    writer.add_uint32(f"{arch}.vocab_size", cfg.vocab_size)
    writer.add_uint32(f"{arch}.context_length", cfg.max_position_embeddings)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)
    writer.add_float32(f"{arch}.rope.freq_base", _rope_theta(cfg))
    if head_dim * cfg.num_attention_heads != cfg.hidden_size:  # llama.cpp reads these then
        writer.add_uint32(f"{arch}.attention.key_length", head_dim)
        writer.add_uint32(f"{arch}.attention.value_length", head_dim)


def _rope_theta(cfg: Any) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    if params.get("rope_type", "default") != "default":
        raise ExportError(f"GGUF export handles default RoPE; this model has {params}")
    return float(params.get("rope_theta") or getattr(cfg, "rope_theta", 10000.0))


_FILE_TYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "f16": 1, "float32": 0}


def write_gguf(
    model: nn.Module,
    metadata_from: Path,
    out_path: Path,
    *,
    float_type: str = "f16",
    provenance: dict | None = None,
) -> dict[str, Any]:
    """Write `model` to `out_path` (atomically) and return the record of what was written."""
    import gguf

    cfg = model.config
    arch = ARCHITECTURES.get(getattr(cfg, "model_type", ""))
    if arch is None:
        raise ExportError(
            f"GGUF export knows the {sorted(ARCHITECTURES)} architectures; this model is "
            f"{getattr(cfg, 'model_type', '?')!r}"
        )
    if float_type not in FLOAT_TYPES:
        raise ExportError(f"float_type must be one of {sorted(FLOAT_TYPES)}")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    reader = gguf.GGUFReader(str(metadata_from))
    tmp = out_path.with_name(f".{out_path.name}.partial")
    writer = gguf.GGUFWriter(str(tmp), arch)
    _copy_metadata(writer, reader, arch)
    _shape_metadata(writer, arch, cfg)
    if provenance:
        writer.add_string("compress.provenance", json.dumps(provenance, sort_keys=True))
    tensors, types = {}, Counter()
    for hf_name, value in model_tensors(model).items():
        gname = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise ExportError(f"no GGUF name for tensor {hf_name!r} ({arch})")
        data, raw, how, err = encode_tensor(_permute(hf_name, value, cfg), float_type)
        if raw is None:
            writer.add_tensor(gname, data)
        else:
            writer.add_tensor(gname, data, raw_dtype=raw)
        tname = raw.name if raw is not None else how
        types[tname] += data.nbytes if value is not None else 0
        tensors[gname] = {"type": tname, "how": how, "bytes": int(data.nbytes), **err}
    file_type = _FILE_TYPES.get(max(types, key=types.get), 0)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out_path)
    return _record(tensors, out_path)


def _record(tensors: dict[str, dict], out_path: Path) -> dict[str, Any]:
    requant = {n: t for n, t in tensors.items() if "re-quantised" in t["how"]}
    worst = max(tensors.items(), key=lambda kv: kv[1]["relative"])
    return {
        "format": "gguf",
        "path": str(out_path),
        "file_bytes": out_path.stat().st_size,
        "tensor_types": dict(Counter(t["type"] for t in tensors.values())),
        "bytes_by_type": {
            k: sum(t["bytes"] for t in tensors.values() if t["type"] == k)
            for k in {t["type"] for t in tensors.values()}
        },
        "requantized": sorted(requant),
        "max_abs_error": max(t["max_abs"] for t in tensors.values()),
        "worst_relative_error": {"tensor": worst[0], "value": worst[1]["relative"]},
        "tensors": tensors,
    }
