"""Deployable artifacts from a run: `compress export RUN_DIR --format gguf|compressed-tensors|onnx`.

A run keeps each variant's model as `model/` (one-variant recipes) or `models/<name>/`; an
export reads those folders (or one given directly), writes `<out>/<variant>.gguf`,
`<variant>.onnx` or the folder `<variant>-ct/` atomically
next to `<variant>.<format>.json` (what was written: tensor types, which weights kept their
codes exactly, the largest error of any that did not), and never overwrites an artifact.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from compress.errors import ExportError

log = logging.getLogger(__name__)

FORMATS = ("gguf", "compressed-tensors", "onnx")
EXTENSIONS = {"gguf": ".gguf", "onnx": ".onnx", "compressed-tensors": "-ct"}
MANIFEST = "compress_quant.json"


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; supported: {', '.join(FORMATS)}.")


def model_folders(path: Path, variant: str | None = None) -> dict[str, Path]:
    """variant name -> model folder, from a run folder or a model folder itself."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return {path.name if path.name not in ("model", "") else path.parent.name: path}
    found: dict[str, Path] = {}
    if (path / "model" / MANIFEST).is_file():
        found[path.name] = path / "model"
    if (path / "models").is_dir():
        found.update(
            {d.name: d for d in sorted((path / "models").iterdir()) if (d / MANIFEST).is_file()}
        )
    if not found:
        raise ExportError(
            f"{path}: no saved model (expected {MANIFEST} in it, in model/ or in models/<name>/)."
        )
    if variant is not None:
        if variant not in found:
            raise ExportError(f"no variant {variant!r} in {path}; it has {sorted(found)}.")
        return {variant: found[variant]}
    return found


def _writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ExportError(f"cannot write to the output folder {out_dir}: {e.strerror}.") from None


def source_gguf(folder: Path) -> Path | None:
    """The GGUF file the model in `folder` was loaded from, when it still exists."""
    src = json.loads((folder / MANIFEST).read_text()).get("source", {})
    if src.get("gguf_file") and src.get("path"):
        p = Path(src["path"]) / src["gguf_file"]
        return p if p.is_file() else None
    return None


def export_folder(folder: Path, fmt: str, dest: Path, *, float_type: str = "f16") -> dict[str, Any]:
    """Export one saved model folder to `dest` (a file path); returns the export record."""
    check_format(fmt)
    if dest.exists():
        raise ExportError(f"{dest} exists; exports are never overwritten (remove it first).")
    t0 = time.perf_counter()
    manifest = json.loads((folder / MANIFEST).read_text())
    runtime = manifest.get("runtime", "torch")
    if fmt == "onnx":
        record = _export_onnx(folder, runtime, dest)
    elif fmt == "compressed-tensors":
        record = _export_ct(folder, runtime, dest)
    else:
        record = _export_gguf(folder, runtime, dest, float_type, manifest)
    record.update(seconds=round(time.perf_counter() - t0, 2), model_folder=str(folder))
    return record


def _export_gguf(folder, runtime, dest, float_type, manifest) -> dict[str, Any]:
    from compress.export.gguf_model import write_gguf
    from compress.quant.serialize import load_compressed

    if runtime != "torch":
        raise ExportError(
            f"{folder} runs in {runtime}; GGUF export reads torch models (int4/int8 weight-only, "
            "dynamic int8 or float). Export this variant with --format onnx instead."
        )
    meta = source_gguf(folder)
    if meta is None:
        raise ExportError(
            f"{folder}: GGUF export copies the tokenizer and model metadata from the GGUF the "
            "model was loaded from, and this model was not loaded from a .gguf file (or the "
            "file is gone).",
            fix="Convert HF folders with llama.cpp's convert_hf_to_gguf.py.",
        )
    handle = load_compressed(folder)
    provenance = {"source": manifest.get("source", {}), "stages": manifest.get("stages", [])}
    return write_gguf(
        handle.model, meta, dest, float_type=float_type, provenance=_short(provenance)
    )


def _export_ct(folder: Path, runtime: str, dest: Path) -> dict[str, Any]:
    from compress.export.ct import write_compressed_tensors
    from compress.quant.serialize import load_compressed

    if runtime != "torch":
        raise ExportError(
            f"{folder} runs in {runtime}; compressed-tensors export reads torch models with "
            "int4/int8 weight-only layers."
        )
    return write_compressed_tensors(load_compressed(folder), dest)


def _short(provenance: dict) -> dict:
    """Stage configs and source, without the bulky per-layer records."""
    stages = [{"method": s.get("method"), "config": s.get("config")} for s in provenance["stages"]]
    return {"source": provenance["source"], "stages": stages}


def _export_onnx(folder: Path, runtime: str, dest: Path) -> dict[str, Any]:
    from compress.runtimes.onnxruntime import ONNX_FILE

    if runtime != "onnxruntime":
        raise ExportError(
            f"{folder} runs in {runtime}; ONNX export copies the graph of a variant that ran "
            "in ONNX Runtime (a recipe stage `onnx_int8`).",
            fix="Add an onnx_int8 stage to the variant, or export it with --format gguf.",
        )
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.copyfile(folder / ONNX_FILE, tmp)
    os.replace(tmp, dest)
    return {"format": "onnx", "path": str(dest), "file_bytes": dest.stat().st_size}


def export_run(
    path: Path,
    fmt: str,
    out_dir: Path | None = None,
    *,
    variant: str | None = None,
    float_type: str = "f16",
) -> list[dict[str, Any]]:
    """Export every variant (or one) of a run; each artifact beside its JSON record."""
    check_format(fmt)
    folders = model_folders(path, variant)
    out_dir = Path(out_dir) if out_dir is not None else Path(path) / "exports"
    _writable(out_dir)
    records = []
    for name, folder in folders.items():
        dest = out_dir / f"{name}{EXTENSIONS[fmt]}"
        log.info("exporting %s -> %s (%s)", folder, dest, fmt)
        record = export_folder(folder, fmt, dest, float_type=float_type)
        side = out_dir / f"{name}.{fmt}.json"
        tmp = side.with_name(f".{side.name}.partial")
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
        os.replace(tmp, side)
        records.append({"variant": name, **record})
    return records
