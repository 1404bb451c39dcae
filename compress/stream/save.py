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

    from safetensors.torch import save_file

    from compress.quant.serialize import (
        _persistent_buffers,
        publish,
        save_config,
        staging,
        write_manifest,
    )

    out_dir = Path(out_dir)
    tmp = staging(out_dir)
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
        save_config(sm.model, handle, tmp)
        write_manifest(
            tmp, handle, modules, tied, streamed="written block by block (compress.stream)"
        )
        publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def shard_name(i: int, n: int) -> str:
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def write_index(folder: Path, weight_map: dict[str, str], total: int) -> None:
    (folder / INDEX).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
