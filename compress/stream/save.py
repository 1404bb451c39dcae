"""Save a streamed model block by block as the folder `compress.quant.serialize` reads:
config, tokenizer, one safetensors shard per block (tied weights once) plus one for the
resident parts, `model.safetensors.index.json` and the manifest; written to a temp folder
renamed into place at the end, so an interrupted save leaves nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compress.stream.files import INDEX
from compress.stream.model import StreamedModel, _is_meta


def save(sm: StreamedModel, handle: Any, out_dir: str | Path) -> Path:
    """Write the model as `compress.quant.serialize` reads it, block by block (one block in
    memory at a time), to a temp folder renamed to `out_dir` at the end (never overwrites)."""
    import shutil
    import tempfile
    import time

    from safetensors.torch import save_file

    from compress.quant.serialize import FORMAT_VERSION, MANIFEST, _persistent_buffers

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; compressed models are never overwritten")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tied = sm._tied()
    blocks = [b for b in sm.sources if not sm._all_tied(b, tied)]
    n = len(blocks) + 1
    weight_map: dict[str, str] = {}
    modules: dict[str, dict] = {}
    total = 0
    try:
        for i, name in enumerate(blocks):
            sm.fill(name)
            tensors, specs = sm.block_tensors(name)
            sm.release(name)
            tensors = {k: v for k, v in tensors.items() if k not in tied}
            save_file(tensors, str(tmp / shard_name(i, n)), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, shard_name(i, n)))
            total += sum(t.numel() * t.element_size() for t in tensors.values())
            modules.update({f"{name}.{k}": v for k, v in specs.items()})
            del tensors
        inside = tuple(b + "." for b in sm.sources)
        rest = {
            k: t.detach().contiguous()
            for k, t in list(sm.model.named_parameters()) + _persistent_buffers(sm.model)
            if not k.startswith(inside) and not _is_meta(t)
        }
        save_file(rest, str(tmp / shard_name(n - 1, n)), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(rest, shard_name(n - 1, n)))
        write_index(tmp, weight_map, total)
        cfg = sm.model.config
        if hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")
        cfg.save_pretrained(tmp)
        if handle.tokenizer is not None:
            handle.tokenizer.save_pretrained(tmp)
        manifest = {
            "format": "compress",
            "version": FORMAT_VERSION,
            "compute_dtype": handle.dtype,
            "modules": modules,
            "tied": tied,
            "stages": handle.stages,
            "source": handle.source.describe(),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "streamed": "written block by block (compress.stream)",
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _publish(tmp: Path, out_dir: Path) -> None:
    import os

    from compress.report.io import _umask

    os.chmod(tmp, 0o777 & ~_umask())
    for f in tmp.iterdir():
        os.chmod(f, 0o666 & ~_umask())
    os.replace(tmp, out_dir)


def shard_name(i: int, n: int) -> str:
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def write_index(folder: Path, weight_map: dict[str, str], total: int) -> None:
    (folder / INDEX).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
