"""`onnx_int8`: export to ONNX and quantize with ONNX Runtime (int8 weights).

1. `export_onnx`: `torch.onnx.export(..., dynamo=True)` of a wrapper whose forward takes
   (input_ids, attention_mask, position_ids, logits_index, past key/value per layer) and
   returns (logits, present key/value per layer), with dynamic batch, sequence and past
   length, so decode runs with a KV cache as users run it (an empty past is a prefill).
   Each Linear's MatMul node is renamed to the torch module name, so `targets` / `ignore`
   select ONNX nodes exactly as they select torch modules. A tied input embedding is made to
   read the lm_head's [hidden, vocab] matrix (a column Gather), so the weight is stored once.
2. `quantize_onnx`, one of two ORT kernels (`kernel`):
   - "dynamic" (default): `quant_pre_process` + `quantize_dynamic`: symmetric int8 weights
     (per output channel by default), uint8 activations with ONE scale per tensor computed
     at run time (DynamicQuantizeMatMul). Fast, but a layer whose inputs have outlier
     channels loses accuracy: on SmolLM2 (WikiText-2, 4 x 2048 tokens) perplexity +66%
     with every Linear, +6.4% with the down_proj layers ignored. Smooth first (stage
     `smoothquant` with `w8a8: false`), or use "matmul_nbits" (+0.5%).
   - "matmul_nbits": `MatMulNBitsQuantizer(bits=8)`: symmetric int8 weights with one scale
     per `block_size` inputs, activations quantized to int8 per block at run time
     (accuracy_level 4), which keeps outlier channels in their own blocks.
   When the tied lm_head is quantized, the embedding Gather reads the same int8 matrix and
   dequantizes the gathered rows with the lm_head's scales: the table is stored once.
Export lives in `compress.runtimes.onnx_export`, the graph rewrites and ORT quantizers in
`compress.runtimes.onnx_graph`; this module holds the stage's config and its `apply`.

3. The handle's model becomes a `compress.runtimes.onnxruntime.OrtCausalLM`: evaluation and
   profiling run inside ONNX Runtime, and `save_compressed` writes `model.onnx`.

Causal LMs only (encoders are refused with a clear error). Graphs above 2 GB are refused.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from compress._config import StageBase
from compress.methods.registry import StageContext, StageRecord, register
from compress.runtimes.onnx_common import NBITS_ACCURACY, require_package

if TYPE_CHECKING:
    from onnx import ModelProto
    from torch import nn

    from compress.handle import ModelHandle
    from compress.runtimes.onnxruntime import OrtCausalLM

log = logging.getLogger(__name__)

MAX_INLINE_BYTES = 2_000_000_000  # protobuf's 2 GB limit on one serialized ModelProto
NBITS_BLOCK_SIZES = (16, 32, 64, 128, 256)


class OnnxInt8Config(StageBase):
    method: Literal["onnx_int8"] = "onnx_int8"
    per_channel: bool = True
    opset: int = Field(18, ge=13)
    kv_cache: bool = Field(True, description="export decoders with past key/values")
    kernel: Literal["dynamic", "matmul_nbits"] = Field(
        "dynamic",
        description="dynamic: quantize_dynamic (int8 weights, uint8 activations with ONE scale "
        "per tensor, DynamicQuantizeMatMul); matmul_nbits: MatMulNBits 8-bit weights with one "
        "scale per block_size inputs, activations quantized per block at run time "
        "(accuracy_level 4): robust to activation outliers",
    )
    block_size: int = Field(32, description="matmul_nbits only: inputs per weight scale")

    @model_validator(mode="after")
    def _kernel_options(self) -> OnnxInt8Config:
        if self.kernel == "matmul_nbits":
            if self.block_size not in NBITS_BLOCK_SIZES:
                raise ValueError(
                    f"block_size must be one of {list(NBITS_BLOCK_SIZES)} (MatMulNBits), "
                    f"got {self.block_size}"
                )
            if not self.per_channel:
                raise ValueError(
                    "per_channel: false applies to kernel dynamic; matmul_nbits always uses "
                    "one scale per output channel and block"
                )
        return self


def _check(handle: ModelHandle) -> None:
    """Refuse what onnx_int8 cannot export: encoders, non-torch handles, quantized modules."""
    from compress.errors import BadInput

    arch = getattr(handle.source, "architecture", "causal_lm")
    if arch != "causal_lm":
        raise BadInput(
            f"onnx_int8 exports causal LMs; this model is an {arch} (not supported yet).",
            fix="Use dynamic_int8 for encoders, or a causal LM with onnx_int8.",
        )
    if handle.runtime != "torch":
        raise BadInput(
            f"onnx_int8 exports a torch model; this handle already runs in {handle.runtime}.",
            fix="Put onnx_int8 first (and only once) in stages.",
        )
    packed = [n for n, m in handle.model.named_modules() if getattr(m, "kind", None)]
    if packed:
        raise BadInput(
            f"onnx_int8 exports float models; {len(packed)} module(s) are already quantized "
            f"in torch (e.g. {packed[0]}).",
            fix="Run onnx_int8 on the float model (as the only quantizing stage).",
        )


def _export(model: nn.Module, cfg: OnnxInt8Config) -> tuple[ModelProto, bool, list[str]]:
    """Export the float graph, falling back to no KV cache when the cached export fails;
    (graph, has a KV cache, notes)."""
    from compress.runtimes.onnx_export import export_onnx

    notes: list[str] = []
    kv_cache = cfg.kv_cache
    try:
        proto = export_onnx(model, opset=cfg.opset, kv_cache=kv_cache)
    except Exception as e:
        if not kv_cache:
            raise
        log.warning("ONNX export with a KV cache failed (%s); exporting without one", e)
        kv_cache = False
        proto = export_onnx(model, opset=cfg.opset, kv_cache=False)
        notes.append(
            f"WARNING: NO KV CACHE. Exporting with past key/values failed ({type(e).__name__}: "
            f"{str(e)[:200]}), so the graph has none: every decode step re-runs the whole "
            "prefix. Decode speed is far below what a cached export would reach."
        )
    if not kv_cache and cfg.kv_cache is False:
        notes.append(
            "WARNING: NO KV CACHE (kv_cache: false): every decode step re-runs the whole prefix."
        )
    return proto, kv_cache, notes


def _matmul_nodes(proto: ModelProto, chosen: dict[str, nn.Linear], notes: list[str]) -> list[str]:
    """The chosen Linears found as MatMul/Gemm nodes (graphs over 2 GB refused); a note on
    those missing is appended to `notes`."""
    from compress.errors import BadInput, StageFailed

    if proto.ByteSize() > MAX_INLINE_BYTES:
        raise BadInput(
            f"the float ONNX graph is {proto.ByteSize() / 1e9:.1f} GB; graphs over 2 GB need "
            "external weight files, which onnx_int8 does not write yet.",
            fix="Use a smaller model or another method.",
        )
    nodes = {n.name for n in proto.graph.node if n.op_type in ("MatMul", "Gemm")}
    found = [n for n in chosen if n in nodes]
    missing = [n for n in chosen if n not in nodes]
    if not found:
        raise StageFailed(
            "onnx_int8: none of the selected Linear layers was found as a MatMul node in the "
            f"exported graph (e.g. {next(iter(chosen))}).",
            fix="Report this model: its export names nodes differently.",
        )
    if missing:
        notes.append(
            f"{len(missing)} selected Linear layer(s) not found as MatMul nodes, left float: "
            + ", ".join(missing[:5])
        )
    return found


def _tied_notes(q: ModelProto, model: nn.Module) -> list[str]:
    """What became of a tied input embedding in the quantized graph."""
    from compress.runtimes.onnx_export import module_name
    from compress.runtimes.onnx_graph import tied_embedding_quantized

    head_name = module_name(model, getattr(model, "get_output_embeddings", lambda: None)())
    tied_q = tied_embedding_quantized(q)
    if tied_q is True:
        return [
            f"tied input embedding + {head_name} stored once as int8; the embedding lookup "
            "dequantizes the gathered rows with the lm_head's per-row scales"
        ]
    if tied_q is False:
        return [
            f"tied input embedding + {head_name} stored once in float32 ({head_name} not quantized)"
        ]
    return []


def _kernel_desc(cfg: OnnxInt8Config) -> tuple[str, str, str, str]:
    """(weight grid, how quantized, ORT ops, activation handling) of the chosen kernel."""
    if cfg.kernel == "dynamic":
        grid = f"{'per-channel' if cfg.per_channel else 'per-tensor'} int8 weights"
        how = "quant_pre_process + quantize_dynamic"
        ops = "MatMulInteger -> DynamicQuantizeMatMul"
        acts = "activations quantized to uint8 with ONE scale per tensor at run time"
    else:
        grid = f"int8 weights, one scale per {cfg.block_size} inputs"
        how = "MatMulNBitsQuantizer(bits=8)"
        ops = f"MatMulNBits (bits 8, block {cfg.block_size}, accuracy_level {NBITS_ACCURACY})"
        acts = f"activations quantized to int8 per block of {cfg.block_size} at run time"
    return grid, how, ops, acts


def _to_ort(handle: ModelHandle, q: ModelProto) -> tuple[OrtCausalLM, bytes, int]:
    """Serialize the quantized graph (its weight bytes in the metadata) and make the handle run
    it in ONNX Runtime; (wrapper, model.onnx bytes, weight bytes)."""
    from onnx import helper

    from compress.runtimes.onnxruntime import META_WEIGHTS, OrtCausalLM, initializer_nbytes

    weight_nbytes = initializer_nbytes(q)
    helper.set_model_props(
        q, dict({p.key: p.value for p in q.metadata_props}, **{META_WEIGHTS: str(weight_nbytes)})
    )
    data = q.SerializeToString()
    config = handle.model.config
    wrapper = OrtCausalLM(data, config, device=handle.device, weight_nbytes=weight_nbytes)
    handle.model = wrapper
    handle.runtime = "onnxruntime"
    handle.dtype = "float32"
    return wrapper, data, weight_nbytes


def _provider_notes(handle: ModelHandle) -> list[str]:
    """A note when CUDA was asked for but ORT has no CUDA provider."""
    import torch

    from compress.runtimes.onnxruntime import providers_for

    if torch.device(handle.device).type == "cuda" and providers_for(handle.device)[0] != (
        "CUDAExecutionProvider"
    ):
        return [f"device {handle.device} requested, but ORT has no CUDA provider here"]
    return []


@register(OnnxInt8Config)
def apply(ctx: StageContext, cfg: OnnxInt8Config) -> StageRecord:
    handle = ctx.model
    import torch

    from compress.targets import cast_float_parts, linears

    require_package("onnx")
    require_package("onnxscript")
    ort = require_package("onnxruntime")
    from compress.runtimes.onnx_graph import quantize_onnx
    from compress.runtimes.onnxruntime import initializer_nbytes

    _check(handle)
    model = handle.model
    t0 = time.perf_counter()
    cast_float_parts(model, torch.float32)
    model.to("cpu").eval()
    chosen = linears(model, cfg.targets, cfg.ignore, stage="onnx_int8")
    proto, kv_cache, notes = _export(model, cfg)
    export_s = time.perf_counter() - t0
    fp32_bytes = initializer_nbytes(proto)
    found = _matmul_nodes(proto, chosen, notes)
    t1 = time.perf_counter()
    q = quantize_onnx(
        proto,
        nodes=found,
        per_channel=cfg.per_channel,
        kernel=cfg.kernel,
        block_size=cfg.block_size,
    )
    del proto
    notes += _tied_notes(q, model)
    quant_s = time.perf_counter() - t1
    wrapper, data, weight_nbytes = _to_ort(handle, q)
    n_params = sum(chosen[n].weight.numel() for n in found)
    runtime = wrapper.runtime
    notes += _provider_notes(handle)
    grid, how, ops, acts = _kernel_desc(cfg)
    notes += [
        f"measured in {runtime} ({torch.get_num_threads()} intra-op threads)",
        f"exported with torch.onnx.export(dynamo=True, opset {cfg.opset}) in {export_s:.1f} s; "
        f"quantized ({how}) in {quant_s:.1f} s",
        f"ONNX weights {fp32_bytes / 1e6:.1f} MB float32 -> {weight_nbytes / 1e6:.1f} MB "
        f"({len(data) / 1e6:.1f} MB model.onnx)",
        acts,
    ]
    if kv_cache:
        notes.append("exported with a KV cache: decode feeds one token and the past key/values")
    return StageRecord.make(
        method="onnx_int8",
        summary=f"ONNX Runtime {cfg.kernel} int8: {grid}, {len(found)} MatMul nodes "
        f"({n_params / 1e6:.1f}M weights), {'with' if kv_cache else 'WITHOUT'} KV cache",
        layers=len(found),
        weights_quantized=n_params,
        kernel=f"onnxruntime {ort.__version__} {ops} ({wrapper.providers[0]})",
        compute_dtype="float32",
        runtime=runtime,
        kv_cache=kv_cache,
        export_seconds=export_s,
        quantize_seconds=quant_s,
        onnx_bytes=len(data),
        notes=notes,
        seconds=time.perf_counter() - t0,
    )
