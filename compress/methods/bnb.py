"""`bnb`: bitsandbytes NF4 / FP4 (optionally double-quantized) and LLM.int8().

Each targeted nn.Linear becomes a `compress.quant.bnb.BnbLinear` holding `bnb.nn.Linear4bit`
(quant_type nf4/fp4, compress_statistics=double_quant, compute_dtype) or `bnb.nn.Linear8bitLt`
(has_fp16_weights=False, threshold), quantized by bitsandbytes on the handle's device: on
CUDA the layer moves to the GPU and bitsandbytes quantizes it there; on CPU it quantizes on CPU
and 4-bit layers are converted to bitsandbytes' CPU kernel layout (AVX512-BF16), where the
double-quantized scales are expanded to bf16 (see compress/quant/bnb.py).

The float parts of the model (embeddings, norms, an ignored lm_head) are cast to
`compute_dtype`, as the rtn stage does.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from compress._config import StageBase
from compress.methods.registry import StageContext, StageRecord, register

if TYPE_CHECKING:
    import torch
    from torch import nn

    from compress.handle import ModelHandle

log = logging.getLogger(__name__)

INSTALL = "pip install bitsandbytes  (or: pip install -e .[bnb])"


class BnbConfig(StageBase):
    method: Literal["bnb"] = "bnb"
    quant_type: Literal["nf4", "fp4", "int8"] = "nf4"
    double_quant: bool = True
    threshold: float = Field(6.0, ge=0, description="LLM.int8 outlier threshold")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    cpu_packed: bool = Field(
        True,
        description="on CPU, hold 4-bit layers in bitsandbytes' CPU kernel layout (fast; its "
        "scales are bf16, so double_quant saves no memory there); false keeps the portable "
        "layout and dequantizes each 4-bit weight at every call (slow)",
    )


def _require_bnb():
    try:
        import bitsandbytes
    except ImportError as e:
        from compress.errors import BadInput

        raise BadInput(f"bnb needs the 'bitsandbytes' package ({e}).", fix=INSTALL) from None
    return bitsandbytes


def _tied_embedding(model, lm_head):
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is lm_head.weight:
        return emb
    return None


def _device(handle: ModelHandle) -> torch.device:
    """The handle's device, refused unless bitsandbytes layers can run there."""
    import torch

    from compress.errors import BadInput

    device = torch.device(str(handle.device))
    if device.type not in ("cpu", "cuda"):
        raise BadInput(
            f"bnb: bitsandbytes layers run on cpu or cuda here; the model is on {device}.",
            fix="Run on --device cpu or cuda.",
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput("bnb: the handle is on cuda but torch sees no CUDA device.")
    return device


def _convert(
    model: nn.Module, chosen: dict[str, nn.Linear], cfg: BnbConfig, device: torch.device
) -> tuple[list[str], dict[str, int], int]:
    """Swap each chosen Linear for a BnbLinear and cast the float parts to compute_dtype;
    (notes, layer count per layout, weights quantized)."""
    import torch

    from compress.progress import tqdm
    from compress.quant.bnb import BnbLinear
    from compress.targets import cast_float_parts, set_module

    kwargs = dict(
        double_quant=cfg.double_quant,
        threshold=cfg.threshold,
        compute_dtype=cfg.compute_dtype,
        cpu_packed=cfg.cpu_packed,
    )
    lm_head = getattr(model, "get_output_embeddings", lambda: None)()
    notes: list[str] = []
    layouts: dict[str, int] = {}
    biases: dict[str, torch.Tensor] = {}
    new_modules: dict[str, BnbLinear] = {}
    n_params = 0
    for name, lin in tqdm(
        list(chosen.items()), desc=f"bnb {cfg.quant_type}", unit="layer", leave=False
    ):
        new = BnbLinear.from_linear(lin, cfg.quant_type, device, **kwargs)
        tied = _tied_embedding(model, lin) if lin is lm_head else None
        set_module(model, name, new)
        new_modules[name] = new
        if lin.bias is not None:
            biases[name] = lin.bias.detach()
        n_params += lin.weight.numel()
        layout = new.layout()
        layouts[layout] = layouts.get(layout, 0) + 1
        if tied is not None:
            notes.append(
                f"{name} untied from the input embedding, which stays in {cfg.compute_dtype}: "
                "the embedding is NOT compressed"
            )
    cast_float_parts(model, getattr(torch, cfg.compute_dtype))
    for name, b in biases.items():  # the cast above rounded them: re-set from the originals
        new_modules[name].set_bias(b)
    return notes, layouts, n_params


def _cpu_4bit_kernel(cfg: BnbConfig, layouts: dict[str, int], notes: list[str]) -> str:
    """The CPU 4-bit kernel the layers run; appends what to know about it to `notes`."""
    from compress.quant.bnb import cpu_4bit_kernel, cpu_bf16_kernel_available

    kernel, fallback = cpu_4bit_kernel()
    if fallback and layouts.get("cpu_packed"):
        notes.append(
            "bitsandbytes CPU 4-bit: its fast kernel (kernels-community gemm_4bit_forward) "
            "is fetched from the hub at run time and is unavailable here ('Failed to load "
            "CPU gemm_4bit_forward ... No module named kernels'); layers run "
            "libbitsandbytes_cpu's fallback kernel"
        )
    if layouts.get("cpu"):
        why = "shape not taken by the CPU kernel layout (out % 32, in % 64)"
        if not cfg.cpu_packed:
            why = "cpu_packed: false"
        elif not cpu_bf16_kernel_available():
            why = "no AVX512-BF16 on this CPU"
        notes.append(
            f"{layouts['cpu']} layer(s) dequantize their 4-bit weight at every call (slow): {why}"
        )
        if not layouts.get("cpu_packed"):
            kernel = "bitsandbytes dequantize_4bit + torch linear per call"
    if layouts.get("cpu_packed") and cfg.double_quant:
        notes.append(
            "double_quant: bitsandbytes' CPU kernel layout holds the block scales as bf16, "
            "so double quantization saves no memory on CPU (its rounding of the scales "
            "remains)"
        )
    if layouts.get("cpu_packed") and cfg.compute_dtype != "bfloat16":
        notes.append(
            "bitsandbytes' CPU 4-bit kernel computes in bfloat16 whatever compute_dtype says"
        )
    return kernel


@register(BnbConfig)
def apply(ctx: StageContext, cfg: BnbConfig) -> StageRecord:
    handle = ctx.model
    from compress.targets import select_linears

    bnb = _require_bnb()
    from compress.quant.bnb import cpu_int8_kernel

    t0 = time.perf_counter()
    model = handle.model
    device = _device(handle)
    chosen = select_linears(model, cfg.targets, cfg.ignore, stage="bnb")
    four_bit = cfg.quant_type != "int8"
    notes, layouts, n_params = _convert(model, chosen, cfg, device)
    handle.dtype = cfg.compute_dtype

    if device.type == "cuda":
        kernel = "bitsandbytes matmul_4bit (CUDA)" if four_bit else "bitsandbytes LLM.int8 (CUDA)"
    elif four_bit:
        kernel = _cpu_4bit_kernel(cfg, layouts, notes)
    else:
        kernel = cpu_int8_kernel()
    if not four_bit:
        notes.append("LLM.int8 layers take float16 inputs (cast in and back out per layer)")
    notes.append(f"float parts of the model now compute in {cfg.compute_dtype}")
    desc = (
        f"{cfg.quant_type}{' double-quant' if cfg.double_quant else ''} blocksize 64"
        if four_bit
        else f"LLM.int8 threshold {cfg.threshold:g}"
    )
    log.info("bnb %s: %d layers on %s (%s)", cfg.quant_type, len(chosen), device, layouts)
    return StageRecord.make(
        method="bnb",
        summary=f"bitsandbytes {desc}, {len(chosen)} Linear layers "
        f"({n_params / 1e6:.1f}M weights) on {device.type}",
        layers=len(chosen),
        weights_quantized=n_params,
        kernel=kernel,
        layout=layouts,
        compute_dtype=cfg.compute_dtype,
        bitsandbytes=getattr(bnb, "__version__", "?"),
        notes=notes,
        seconds=time.perf_counter() - t0,
    )
