"""`onnx_int8`: export to ONNX and quantize with ONNX Runtime (dynamic int8).

1. `export_onnx`: `torch.onnx.export(..., dynamo=True)` of a wrapper whose forward takes
   (input_ids, attention_mask, position_ids, logits_index, past key/value per layer) and
   returns (logits, present key/value per layer), with dynamic batch, sequence and past
   length, so decode runs with a KV cache as users run it (an empty past is a prefill).
   Each Linear's MatMul node is renamed to the torch module name, so `targets` / `ignore`
   select ONNX nodes exactly as they select torch modules. A tied input embedding is made to
   read the lm_head's [hidden, vocab] matrix (a column Gather), so the weight is stored once.
2. `quantize_onnx`: `onnxruntime.quantization.quant_pre_process` then `quantize_dynamic`
   (int8 weights, per channel by default; uint8 activations quantized per tensor at run
   time). When the tied lm_head is quantized, the embedding Gather reads the same int8 matrix
   and dequantizes the gathered rows with the lm_head's per-vocab-row scales.
3. The handle's model becomes a `compress.runtimes.onnxruntime.OrtCausalLM`: evaluation and
   profiling run inside ONNX Runtime, and `save_compressed` writes `model.onnx`.
"""

from __future__ import annotations

import ast
import inspect
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from compress._config import StageBase

if TYPE_CHECKING:
    from compress.handle import ModelHandle

log = logging.getLogger(__name__)

INSTALL = "pip install onnx onnxruntime onnxscript  (or: pip install -e .[onnx])"
MAX_INLINE_BYTES = 2_000_000_000  # protobuf's 2 GB limit on one serialized ModelProto
WRAPPER_PREFIX = "model."  # the export wrapper holds the HF model as `self.model`


class OnnxInt8Config(StageBase):
    method: Literal["onnx_int8"] = "onnx_int8"
    per_channel: bool = True
    opset: int = Field(18, ge=13)
    kv_cache: bool = Field(True, description="export decoders with past key/values")


def _require(module: str):
    import importlib

    from compress.errors import StageFailed

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise StageFailed(
            f"onnx_int8 needs the '{module.split('.')[0]}' package ({e}).", fix=INSTALL
        ) from None


# -- export -------------------------------------------------------------------------------


def _export_wrapper(model, kv_cache: bool):
    """A module whose flat-tensor forward the ONNX exporter can trace."""
    import torch
    from torch import nn

    accepts_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
    n_layers = model.config.get_text_config(decoder=True).num_hidden_layers

    def run(model, input_ids, attention_mask, position_ids, logits_index, cache):
        kw = {"logits_to_keep": logits_index} if accepts_keep else {}
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=cache is not None,
            **kw,
        )
        logits = out.logits if accepts_keep else out.logits[:, logits_index]
        return out, logits

    if not kv_cache:

        class NoCache(nn.Module):
            def __init__(self, m):
                super().__init__()
                self.model = m

            def forward(self, input_ids, attention_mask, position_ids, logits_index):
                return run(self.model, input_ids, attention_mask, position_ids, logits_index, None)[
                    1
                ]

        return NoCache(model)

    from transformers import DynamicCache

    class WithCache(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.model = m

        def forward(self, input_ids, attention_mask, position_ids, logits_index, past):
            pairs = [(past[2 * i], past[2 * i + 1]) for i in range(n_layers)]
            cache = DynamicCache(ddp_cache_data=pairs, config=self.model.config)
            out, logits = run(
                self.model, input_ids, attention_mask, position_ids, logits_index, cache
            )
            flat: list[torch.Tensor] = []
            for layer in out.past_key_values.layers:
                flat += [layer.keys, layer.values]
            return (logits, *flat)

    return WithCache(model)


def export_onnx(model, *, opset: int = 18, kv_cache: bool = True):
    """Export a float32 HF causal LM to an `onnx.ModelProto` (weights inline, not quantized).

    Interface: see `compress.runtimes.onnxruntime`. MatMul nodes of Linear layers are named
    after their torch module (e.g. `model.layers.0.mlp.up_proj`); a tied input embedding
    shares the lm_head's weight. Raises if the exporter fails.
    """
    import torch
    from torch.export import Dim

    _require("onnxscript")
    onnx = _require("onnx")
    from compress.runtimes.onnxruntime import META_KV, META_LAYERS

    cfg = model.config.get_text_config(decoder=True)
    n_layers = cfg.num_hidden_layers
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    # sizes all different and > 1 so the exporter keeps every dimension symbolic
    batch, seq, past, keep = 2, 5, 3, 2
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=gen)
    pos = torch.arange(past, past + seq).expand(batch, seq).contiguous()
    kv = [
        torch.randn(batch, kv_heads, past, head_dim, generator=gen) for _ in range(2 * n_layers)
    ]
    d_batch, d_seq, d_total, d_keep = Dim("batch"), Dim("seq"), Dim("total"), Dim("keep")
    names_in = ["input_ids", "attention_mask", "position_ids", "logits_index"]
    names_out = ["logits"]
    shapes: dict[str, Any] = {
        "input_ids": {0: d_batch, 1: d_seq},
        "attention_mask": {0: d_batch, 1: d_total if kv_cache else d_seq},
        "position_ids": {0: d_batch, 1: d_seq},
        "logits_index": {0: d_keep},
    }
    if kv_cache:
        mask = torch.ones(batch, past + seq, dtype=torch.long)
        args: tuple = (ids, mask, pos, torch.arange(seq - keep, seq), kv)
        d_past = Dim("past")
        shapes["past"] = [{0: d_batch, 2: d_past} for _ in range(2 * n_layers)]
        for i in range(n_layers):
            names_in += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
            names_out += [f"present.{i}.key", f"present.{i}.value"]
    else:
        mask = torch.ones(batch, seq, dtype=torch.long)
        args = (ids, mask, pos - past, torch.arange(seq - keep, seq))
    wrapper = _export_wrapper(model, kv_cache).eval()
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            args,
            dynamo=True,
            opset_version=opset,
            dynamic_shapes=shapes,
            input_names=names_in,
            output_names=names_out,
            verbose=False,
        )
    proto = program.model_proto
    del program
    _name_linear_nodes(proto)
    for node in proto.graph.node:  # exporter stack traces: megabytes of text, not needed
        del node.metadata_props[:]
        node.doc_string = ""
    if _is_tied(model):
        _share_tied_embedding(proto, _module_name(model, model.get_output_embeddings()))
    onnx.helper.set_model_props(proto, {META_KV: str(kv_cache).lower(), META_LAYERS: str(n_layers)})
    return proto


def _module_name(model, module) -> str | None:
    return next((n for n, m in model.named_modules() if m is module), None)


def _is_tied(model) -> bool:
    emb = getattr(model, "get_input_embeddings", lambda: None)()
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if emb is None or head is None:
        return False
    w_e, w_h = getattr(emb, "weight", None), getattr(head, "weight", None)
    return w_e is not None and w_h is not None and w_e.data_ptr() == w_h.data_ptr()


def _initializers(proto) -> dict[str, Any]:
    return {t.name: t for t in proto.graph.initializer}


def _name_linear_nodes(proto) -> None:
    """Rename each MatMul/Gemm with a constant weight to its torch module's name (read from
    the exporter's `pkg.torch.onnx.name_scopes` metadata), e.g. `model.layers.0.mlp.up_proj`."""
    inits = _initializers(proto)
    taken = {n.name for n in proto.graph.node}
    for node in proto.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or node.input[1] not in inits:
            continue
        meta = {p.key: p.value for p in node.metadata_props}
        if "aten.linear" not in meta.get("pkg.torch.onnx.fx_node", ""):
            continue
        try:
            scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        except (ValueError, SyntaxError):
            continue
        if len(scopes) < 2 or not scopes[-2].startswith(WRAPPER_PREFIX):
            continue
        name = scopes[-2][len(WRAPPER_PREFIX) :]
        if name in taken:
            continue
        taken.discard(node.name)
        node.name = name
        taken.add(name)


def _consumers(proto, value: str) -> list[Any]:
    return [n for n in proto.graph.node if value in n.input]


def _share_tied_embedding(proto, head_name: str | None) -> bool:
    """Tied embedding: the exporter stores the table twice (Gather reads E [vocab, hidden],
    the lm_head MatMul reads a folded E^T [hidden, vocab]). Make the Gather read E^T by
    columns (Gather axis 1, then Transpose) and drop E. Returns whether it changed anything."""
    from onnx import helper, numpy_helper

    inits = _initializers(proto)
    head = next((n for n in proto.graph.node if n.name == head_name), None)
    if head is None or head.input[1] not in inits:
        log.warning("tied lm_head %r not found as a MatMul in the ONNX graph", head_name)
        return False
    w_t = numpy_helper.to_array(inits[head.input[1]])
    for node in list(proto.graph.node):
        if node.op_type != "Gather" or node.input[0] not in inits or node.input[0] == head.input[1]:
            continue
        e = inits[node.input[0]]
        if tuple(e.dims) != w_t.shape[::-1]:
            continue
        if not (numpy_helper.to_array(e).T == w_t).all():
            continue
        cols = f"{node.output[0]}__cols"
        idx = list(proto.graph.node).index(node)
        gather = helper.make_node(
            "Gather", [head.input[1], node.input[1]], [cols], name=f"{node.name}__tied", axis=1
        )
        rank = _rank(proto, node.input[1])
        perm = list(range(1, rank + 1)) + [0]
        transpose = helper.make_node(
            "Transpose", [cols], [node.output[0]], name=f"{node.name}__tied_T", perm=perm
        )
        proto.graph.node.remove(node)
        proto.graph.node.insert(idx, transpose)
        proto.graph.node.insert(idx, gather)
        if not _consumers(proto, e.name):
            proto.graph.initializer.remove(e)
        return True
    log.warning("tied embedding: no Gather reading the lm_head's table found; stored twice")
    return False


def _rank(proto, value: str) -> int:
    for vi in list(proto.graph.input) + list(proto.graph.value_info):
        if vi.name == value and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return 2  # token ids are [batch, seq]


# -- quantize -----------------------------------------------------------------------------


def quantize_onnx(proto, *, nodes: list[str], per_channel: bool = True):
    """Dynamic int8 quantization of the MatMul nodes named in `nodes` (int8 weights, symmetric,
    per output channel when `per_channel`). Returns a new ModelProto (weights inline)."""
    onnx = _require("onnx")
    _require("onnxruntime")
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    props = {p.key: p.value for p in proto.metadata_props}
    with tempfile.TemporaryDirectory(prefix="compress-onnx-") as tmp:
        src, pre, out = (Path(tmp) / f for f in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save_model(proto, str(src), save_as_external_data=False)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        src.unlink()
        quantize_dynamic(
            str(pre),
            str(out),
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=list(nodes),
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            extra_options={"WeightSymmetric": True, "MatMulConstBOnly": True},
        )
        q = onnx.load_model(str(out))
    onnx.helper.set_model_props(q, props)
    return q


def _dequantized_tied_gather(proto) -> bool:
    """After quantizing a tied lm_head: the embedding Gather (axis 1 on the lm_head's float
    [hidden, vocab] matrix) reads the int8 matrix instead and scales the gathered columns
    by their per-vocab scale, so the float table can go. Returns whether it changed anything."""
    from onnx import TensorProto, helper, numpy_helper

    inits = _initializers(proto)
    for node in list(proto.graph.node):
        if node.op_type != "Gather" or not node.name.endswith("__tied"):
            continue
        w = node.input[0]
        q, s, z = f"{w}_quantized", f"{w}_scale", f"{w}_zero_point"
        if q not in inits or s not in inits:
            return False  # the lm_head stayed float: the Gather shares its float matrix
        if z in inits and numpy_helper.to_array(inits[z]).any():
            log.warning("tied embedding: nonzero int8 zero points; keeping the float table")
            return False
        ids, cols = node.input[1], node.output[0]
        scale = numpy_helper.to_array(inits[s])
        idx = list(proto.graph.node).index(node)
        new = [
            helper.make_node("Gather", [q, ids], [f"{cols}__q"], name=f"{node.name}_q", axis=1),
            helper.make_node(
                "Cast", [f"{cols}__q"], [f"{cols}__f"], name=f"{node.name}_cast", to=TensorProto.FLOAT
            ),
        ]
        if scale.ndim == 0 or scale.size == 1:
            new.append(helper.make_node("Mul", [f"{cols}__f", s], [cols], name=f"{node.name}_mul"))
        else:  # one scale per vocab row: gather the ids' scales, broadcast over hidden
            new.append(
                helper.make_node("Gather", [s, ids], [f"{cols}__s"], name=f"{node.name}_s", axis=0)
            )
            new.append(
                helper.make_node("Mul", [f"{cols}__f", f"{cols}__s"], [cols], name=f"{node.name}_mul")
            )
        proto.graph.node.remove(node)
        for k, n in enumerate(new):
            proto.graph.node.insert(idx + k, n)
        if not _consumers(proto, w) and w in inits:
            proto.graph.initializer.remove(inits[w])
        return True
    return False


# -- the stage ----------------------------------------------------------------------------


def apply(handle: ModelHandle, cfg: OnnxInt8Config, calibration=None) -> dict:
    import torch
    from torch import nn

    from compress.errors import StageFailed
    from compress.methods.targets import cast_float_parts, select

    onnx = _require("onnx")
    _require("onnxscript")
    ort = _require("onnxruntime")
    from compress.runtimes.onnxruntime import (
        META_WEIGHTS,
        OrtCausalLM,
        initializer_nbytes,
        providers_for,
    )

    arch = getattr(handle.source, "architecture", "causal_lm")
    if arch != "causal_lm":
        raise StageFailed(
            f"onnx_int8 exports causal LMs; this model is an {arch} (not supported yet).",
            fix="Use dynamic_int8 for encoders, or a causal LM with onnx_int8.",
        )
    if handle.runtime != "torch":
        raise StageFailed(
            f"onnx_int8 exports a torch model; this handle already runs in {handle.runtime}.",
            fix="Put onnx_int8 first (and only once) in stages.",
        )
    model = handle.model
    packed = [n for n, m in model.named_modules() if getattr(m, "kind", None)]
    if packed:
        raise StageFailed(
            f"onnx_int8 exports float models; {len(packed)} module(s) are already quantized "
            f"in torch (e.g. {packed[0]}).",
            fix="Run onnx_int8 on the float model (as the only quantizing stage).",
        )
    t0 = time.perf_counter()
    cast_float_parts(model, torch.float32)
    model.to("cpu").eval()
    chosen = {
        n: m
        for n, m in select(model, cfg.targets, cfg.ignore, stage="onnx_int8").items()
        if isinstance(m, nn.Linear)
    }
    if not chosen:
        raise StageFailed(
            f"onnx_int8: targets {cfg.targets} (minus ignore {cfg.ignore}) match no nn.Linear.",
            fix="Target Linear layers, e.g. targets: [Linear].",
        )
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
    export_s = time.perf_counter() - t0
    fp32_bytes = initializer_nbytes(proto)
    if proto.ByteSize() > MAX_INLINE_BYTES:
        raise StageFailed(
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
    t1 = time.perf_counter()
    q = quantize_onnx(proto, nodes=found, per_channel=cfg.per_channel)
    del proto
    head_name = _module_name(model, getattr(model, "get_output_embeddings", lambda: None)())
    if _is_tied(model):
        if _dequantized_tied_gather(q):
            notes.append(
                f"tied input embedding + {head_name} stored once as int8 (per vocab row "
                "scales); the embedding lookup dequantizes the gathered rows"
            )
        else:
            notes.append(
                f"tied input embedding + {head_name} stored once in float32 ({head_name} not "
                "quantized)"
            )
    quant_s = time.perf_counter() - t1
    weight_nbytes = initializer_nbytes(q)
    onnx.helper.set_model_props(
        q, dict({p.key: p.value for p in q.metadata_props}, **{META_WEIGHTS: str(weight_nbytes)})
    )
    data = q.SerializeToString()
    n_params = sum(chosen[n].weight.numel() for n in found)
    config = model.config
    wrapper = OrtCausalLM(data, config, device=handle.device, weight_nbytes=weight_nbytes)
    handle.model = wrapper
    handle.runtime = "onnxruntime"
    handle.dtype = "float32"
    runtime = wrapper.runtime
    if torch.device(handle.device).type == "cuda" and providers_for(handle.device)[0] != (
        "CUDAExecutionProvider"
    ):
        notes.append(f"device {handle.device} requested, but ORT has no CUDA provider here")
    notes += [
        f"measured in {runtime} ({torch.get_num_threads()} intra-op threads)",
        f"exported with torch.onnx.export(dynamo=True, opset {cfg.opset}) in {export_s:.1f} s; "
        f"quantized (quant_pre_process + quantize_dynamic) in {quant_s:.1f} s",
        f"ONNX weights {fp32_bytes / 1e6:.1f} MB float32 -> {weight_nbytes / 1e6:.1f} MB "
        f"({len(data) / 1e6:.1f} MB model.onnx)",
        "activations quantized to uint8 per tensor at run time (ORT DynamicQuantizeMatMul)",
    ]
    if kv_cache:
        notes.append("exported with a KV cache: decode feeds one token and the past key/values")
    return {
        "method": "onnx_int8",
        "summary": f"ONNX Runtime dynamic int8, "
        f"{'per-channel' if cfg.per_channel else 'per-tensor'} weights, {len(found)} MatMul "
        f"nodes ({n_params / 1e6:.1f}M weights), {'with' if kv_cache else 'WITHOUT'} KV cache",
        "layers": len(found),
        "weights_quantized": n_params,
        "kernel": f"onnxruntime {ort.__version__} MatMulInteger/DynamicQuantizeMatMul "
        f"({wrapper.providers[0]})",
        "compute_dtype": "float32",
        "runtime": runtime,
        "kv_cache": kv_cache,
        "export_seconds": export_s,
        "quantize_seconds": quant_s,
        "onnx_bytes": len(data),
        "notes": notes,
        "seconds": time.perf_counter() - t0,
    }
