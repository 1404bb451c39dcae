"""The saved form of a compressed model: a folder any `compress` command can load back.

    config.json, tokenizer files       as transformers writes them
    model.safetensors                  float tensors + each quantized module's portable tensors
                                       (int8 codes, int4 codes packed two per byte, scales, zeros)
    compress_quant.json                which module is which kind, tied names, stages, source

Loading rebuilds the architecture from config.json, swaps in the quantized modules and
fills them from safetensors; no pickle anywhere.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from compress.handle import ModelHandle, ModelSource
from compress.quant.modules import Int8Embedding
from compress.report.io import _umask
from compress.targets import set_module

log = logging.getLogger(__name__)

MANIFEST = "compress_quant.json"
FORMAT_VERSION = 1

#: module kind -> "module:Class". A quantized module class has `kind`, `spec() -> dict`,
#: `export() -> dict[str, Tensor]`, `load_export(tensors)` and `shell(spec, dtype)`.
MODULE_KINDS = {
    "int8_linear": "compress.quant.modules:Int8Linear",
    "int4_linear": "compress.quant.modules:Int4Linear",
    "dynamic_int8_linear": "compress.quant.dynamic:DynamicInt8Linear",
    "bnb_linear": "compress.quant.bnb:BnbLinear",
    "w8a8_linear": "compress.quant.w8a8:W8A8Linear",
}

#: runtime name -> module with `save(handle, tmp_dir)` and `load(path, device) -> ModelHandle`
RUNTIMES = {
    "onnxruntime": "compress.runtimes.onnxruntime",
    "llamacpp": "compress.runtimes.llamacpp",
}


def _kind_class(kind: str):
    if kind not in MODULE_KINDS:
        raise ValueError(f"unknown quantized module kind {kind!r} in {MANIFEST}")
    mod, cls = MODULE_KINDS[kind].split(":")
    return getattr(importlib.import_module(mod), cls)


def _module_spec(m: nn.Module, model: nn.Module) -> dict[str, Any]:
    if isinstance(m, Int8Embedding):
        src = m.weight_source
        shares = next(n for n, x in model.named_modules() if x is src)
        return {"kind": m.kind, "shares": shares, "embed_scale": m.embed_scale}
    return m.spec()


def save_compressed(handle: ModelHandle, out_dir: str | Path) -> Path:
    """Write the model to `out_dir` atomically (a temp folder renamed at the end)."""
    out_dir = Path(out_dir)
    model = handle.model
    quant = (
        {n: m for n, m in model.named_modules() if getattr(m, "kind", None)}
        if handle.runtime == "torch"
        else {}
    )
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, m in quant.items():
        if hasattr(m, "export"):
            for k, t in m.export().items():
                tensors[f"{name}.{k}"] = t.detach().cpu().contiguous()
    inside_quant = tuple(f"{n}." for n in quant)
    for name, t in list(model.named_parameters(remove_duplicate=False)) + _persistent_buffers(
        model
    ):
        if name.startswith(inside_quant):
            continue
        key = t.untyped_storage().data_ptr()
        if key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().cpu().contiguous()
    specs = {n: _module_spec(m, model) for n, m in quant.items()}
    tmp = staging(out_dir)
    try:
        save_config(model, handle, tmp)
        if handle.runtime == "torch":
            save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            write_manifest(tmp, handle, specs, tied)
        else:
            importlib.import_module(RUNTIMES[handle.runtime]).save(handle, tmp)
            write_manifest(tmp, handle, {}, {}, runtime=handle.runtime)
        publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def staging(out_dir: Path) -> Path:
    """A fresh temp folder beside `out_dir` (which must not exist: never overwritten)."""
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; compressed models are never overwritten")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))


def save_config(model: nn.Module, handle: ModelHandle, tmp: Path) -> None:
    """config.json (without a quantization_config: ours is the manifest) and the tokenizer."""
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    cfg.save_pretrained(tmp)
    if handle.tokenizer is not None:
        handle.tokenizer.save_pretrained(tmp)


def write_manifest(
    tmp: Path, handle: ModelHandle, modules: dict, tied: dict[str, str], **extra: Any
) -> None:
    manifest = {
        "format": "compress",
        "version": FORMAT_VERSION,
        "compute_dtype": handle.dtype,
        "modules": modules,
        "tied": tied,
        "stages": handle.stages,
        "source": handle.source.describe(),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))


def publish(tmp: Path, out_dir: Path) -> None:
    """Give the finished temp folder the usual permissions and rename it into place."""
    os.chmod(tmp, 0o777 & ~_umask())
    for f in tmp.iterdir():
        os.chmod(f, 0o666 & ~_umask())
    os.replace(tmp, out_dir)


def block_export(block: nn.Module, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """One block's tensors as `save_compressed` writes them (quantized modules in portable
    form, names under `prefix`) and the specs of its quantized modules (relative names)."""
    quant = {n: m for n, m in block.named_modules() if getattr(m, "kind", None)}
    tensors: dict[str, torch.Tensor] = {}
    for name, m in quant.items():
        for k, t in m.export().items():
            tensors[f"{prefix}.{name}.{k}"] = t.detach().cpu().contiguous()
    inside = tuple(f"{n}." for n in quant)
    for name, t in list(block.named_parameters()) + _persistent_buffers(block):
        if not name.startswith(inside):
            tensors[f"{prefix}.{name}"] = t.detach().cpu().contiguous()
    return tensors, {n: m.spec() for n, m in quant.items()}


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved folder: model.safetensors, or the shards its index lists."""
    index = path / "model.safetensors.index.json"
    if not index.is_file():
        return load_file(str(path / "model.safetensors"))
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        out.update(load_file(str(path / shard)))
    return out


def _persistent_buffers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    out = []
    for mname, mod in model.named_modules():
        skip = getattr(mod, "_non_persistent_buffers_set", set())
        for bname, b in mod.named_buffers(recurse=False):
            if b is not None and bname not in skip:
                out.append((f"{mname}.{bname}" if mname else bname, b))
    return out


def load_compressed(
    source: ModelSource | str | Path, *, dtype: str | None = None, device: str = "cpu"
) -> ModelHandle:
    """Load a folder written by `save_compressed`. `dtype` is ignored (the manifest decides)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(source.path if isinstance(source, ModelSource) else source)
    manifest = json.loads((path / MANIFEST).read_text())
    if manifest.get("format") != "compress" or manifest.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path / MANIFEST}: unsupported format {manifest.get('version')}")
    if manifest.get("runtime", "torch") != "torch":
        runtime = manifest["runtime"]
        if runtime not in RUNTIMES:
            raise ValueError(f"{path / MANIFEST}: unknown runtime {runtime!r}")
        return importlib.import_module(RUNTIMES[runtime]).load(path, device)
    compute = getattr(torch, manifest["compute_dtype"])
    config = AutoConfig.from_pretrained(path)
    model = AutoModelForCausalLM.from_config(config, dtype=compute).eval()
    specs = manifest["modules"]
    tensors = read_tensors(path)
    quant_prefixes = tuple(f"{n}." for n in specs)
    dense = {k: v for k, v in tensors.items() if not k.startswith(quant_prefixes)}
    for alias, target in manifest.get("tied", {}).items():
        dense[alias] = dense[target]
    missing, unexpected = model.load_state_dict(dense, strict=False)
    missing = [k for k in missing if not k.startswith(quant_prefixes)]
    if missing or unexpected:
        raise ValueError(f"{path}: tensors missing {missing[:5]} / unexpected {unexpected[:5]}")
    for name, spec in specs.items():
        if spec["kind"] == "int8_embedding":
            continue
        shell = _kind_class(spec["kind"]).shell(spec, compute)
        prefix = f"{name}."
        shell.load_export({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        set_module(model, name, shell)
    for name, spec in specs.items():
        if spec["kind"] == "int8_embedding":
            src = model.get_submodule(spec["shares"])
            set_module(model, name, Int8Embedding(src, compute, spec.get("embed_scale")))
    model.to(device)
    src_info = manifest.get("source", {})
    return ModelHandle(
        model=model,
        tokenizer=AutoTokenizer.from_pretrained(path),
        source=ModelSource(
            spec=str(path),
            kind="compressed",
            path=path,
            note=f"compressed by compress from {src_info.get('spec', '?')}",
        ),
        dtype=manifest["compute_dtype"],
        device=device,
        stages=manifest.get("stages", []),
    )
