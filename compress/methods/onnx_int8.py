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
3. The handle's model becomes a `compress.runtimes.onnxruntime.OrtCausalLM`: evaluation and
   profiling run inside ONNX Runtime, and `save_compressed` writes `model.onnx`.

Causal LMs only (encoders are refused with a clear error). Graphs above 2 GB are refused.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import logging
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from compress._config import StageBase

if TYPE_CHECKING:
    from compress.handle import ModelHandle

log = logging.getLogger(__name__)

INSTALL = "pip install onnx onnxruntime onnxscript  (or: pip install -e .[onnx])"
MAX_INLINE_BYTES = 2_000_000_000  # protobuf's 2 GB limit on one serialized ModelProto
NBITS_BLOCK_SIZES = (16, 32, 64, 128, 256)
NBITS_ACCURACY = 4  # MatMulNBits accuracy_level 4: int8 activations, int32 accumulation
WRAPPER_PREFIX = "model."  # the export wrapper holds the HF model as `self.model`


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
                _, logits = run(
                    self.model, input_ids, attention_mask, position_ids, logits_index, None
                )
                return logits

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
    kv = [torch.randn(batch, kv_heads, past, head_dim, generator=gen) for _ in range(2 * n_layers)]
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
    with torch.no_grad(), _quiet_exporter():
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
    _fold_weight_transposes(proto)
    _name_linear_nodes(proto)
    for node in proto.graph.node:  # exporter stack traces: megabytes of text, not needed
        del node.metadata_props[:]
        node.doc_string = ""
    if _is_tied(model):
        _share_tied_embedding(proto, _module_name(model, model.get_output_embeddings()))
    onnx.helper.set_model_props(proto, {META_KV: str(kv_cache).lower(), META_LAYERS: str(n_layers)})
    return proto


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's optimizer logs every folded constant at INFO (~1,500 lines for SmolLM2)
    and warns about unused axis names and torchvision: keep them out of the run's log."""
    prefixes = ("onnxscript", "onnx_ir", "torch.onnx")
    loggers = [logging.getLogger(p) for p in prefixes] + [
        logging.getLogger(n)
        for n in list(logging.root.manager.loggerDict)
        if n.startswith(prefixes)
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"# The axis name")
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


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


def _fold_weight_transposes(proto) -> int:
    """Fold `Transpose(initializer)` feeding a MatMul's weight input into a transposed
    initializer (the exporter leaves large ones, e.g. a tied lm_head's, to run time, where the
    quantizer cannot see a constant weight). Returns how many it folded."""
    import numpy as np
    from onnx import numpy_helper

    inits = _initializers(proto)
    folded = 0
    for node in list(proto.graph.node):
        if node.op_type != "Transpose" or node.input[0] not in inits:
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        if len(inits[node.input[0]].dims) != 2 or perm not in (None, [1, 0]):
            continue
        users = _consumers(proto, node.output[0])
        if not users or any(u.op_type != "MatMul" or u.input[1] != node.output[0] for u in users):
            continue
        src = inits[node.input[0]]
        arr = np.ascontiguousarray(numpy_helper.to_array(src).T)
        proto.graph.initializer.append(numpy_helper.from_array(arr, node.output[0]))
        proto.graph.node.remove(node)
        if not _consumers(proto, src.name):
            proto.graph.initializer.remove(src)
        folded += 1
    return folded


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
    import numpy as np
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
        if not np.array_equal(numpy_helper.to_array(e).T, w_t):
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


def quantize_onnx(
    proto,
    *,
    nodes: list[str],
    per_channel: bool = True,
    kernel: str = "dynamic",
    block_size: int = 32,
):
    """Quantize the MatMul nodes named in `nodes` to int8 weights; returns a new ModelProto
    (weights inline) and keeps the input's metadata.

    kernel "dynamic": `quant_pre_process` + `quantize_dynamic` (symmetric int8 weights, per
    output channel when `per_channel`; uint8 activations, one scale per tensor at run time).
    kernel "matmul_nbits": `MatMulNBitsQuantizer(bits=8)` (symmetric int8 weights with one
    scale per `block_size` inputs; int8 activations per block at run time, accuracy_level 4).
    A tied embedding that shared the lm_head's float matrix is moved onto its int8 one.
    """
    onnx = _require("onnx")
    _require("onnxruntime")
    props = {p.key: p.value for p in proto.metadata_props}
    if kernel == "matmul_nbits":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        q = onnx.ModelProto()
        q.CopyFrom(proto)
        keep = set(nodes)
        quant_log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
        level = quant_log.level
        quant_log.setLevel(logging.WARNING)  # it logs every node at INFO
        try:
            quantizer = MatMulNBitsQuantizer(
                q,
                bits=8,
                block_size=block_size,
                is_symmetric=True,
                accuracy_level=NBITS_ACCURACY,
                # nodes_to_include adds to op_types_to_quantize; exclusion is what restricts
                nodes_to_exclude=[
                    n.name for n in q.graph.node if n.op_type == "MatMul" and n.name not in keep
                ],
                op_types_to_quantize=("MatMul",),
            )
            quantizer.process()
        finally:
            quant_log.setLevel(level)
        q = quantizer.model.model
        _tied_gather_from_nbits(q)
    elif kernel == "dynamic":
        from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

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
        _tied_gather_from_dynamic(q)
    else:
        raise ValueError(f"unknown kernel {kernel!r}")
    onnx.helper.set_model_props(q, props)
    return q


def tied_embedding_quantized(proto) -> bool | None:
    """None: no tied embedding; True: it reads the lm_head's int8 matrix; False: float."""
    gathers = [n for n in proto.graph.node if n.name.endswith(("__tied", "__tied_q"))]
    if not gathers:
        return None
    return any(n.name.endswith("__tied_q") for n in gathers)


def _replace_node(proto, old, new: list) -> None:
    idx = list(proto.graph.node).index(old)
    proto.graph.node.remove(old)
    for k, n in enumerate(new):
        proto.graph.node.insert(idx + k, n)


def _drop_if_unused(proto, name: str) -> None:
    inits = _initializers(proto)
    if name in inits and not _consumers(proto, name):
        proto.graph.initializer.remove(inits[name])


def _tied_gather_from_dynamic(proto) -> bool:
    """quantize_dynamic left the tied embedding's Gather (axis 1 on the lm_head's float
    [hidden, vocab] matrix) on the float matrix: make it read the int8 matrix and scale the
    gathered columns by their per-vocab scale, then drop the float matrix."""
    from onnx import TensorProto, helper, numpy_helper

    inits = _initializers(proto)
    node = next((n for n in proto.graph.node if n.name.endswith("__tied")), None)
    if node is None:
        return False
    w = node.input[0]
    q, s, z = f"{w}_quantized", f"{w}_scale", f"{w}_zero_point"
    if q not in inits or s not in inits:
        return False  # the lm_head stayed float: the Gather shares its float matrix
    if z in inits and numpy_helper.to_array(inits[z]).any():
        log.warning("tied embedding: nonzero int8 zero points; keeping the float table")
        return False
    ids, cols, name = node.input[1], node.output[0], f"{node.name}_q"
    new = [
        helper.make_node("Gather", [q, ids], [f"{cols}__q"], name=name, axis=1),
        helper.make_node(
            "Cast", [f"{cols}__q"], [f"{cols}__f"], name=f"{name}_cast", to=TensorProto.FLOAT
        ),
    ]
    if numpy_helper.to_array(inits[s]).size == 1:
        new.append(helper.make_node("Mul", [f"{cols}__f", s], [cols], name=f"{name}_mul"))
    else:  # one scale per vocab row: [hidden, b, s] * [b, s]
        new += [
            helper.make_node("Gather", [s, ids], [f"{cols}__s"], name=f"{name}_s", axis=0),
            helper.make_node("Mul", [f"{cols}__f", f"{cols}__s"], [cols], name=f"{name}_mul"),
        ]
    _replace_node(proto, node, new)
    _drop_if_unused(proto, w)
    return True


def _tied_gather_from_nbits(proto) -> bool:
    """MatMulNBits stores the lm_head as B [vocab, blocks, block] uint8 (zero point 128 when
    symmetric) with scales [vocab, blocks]: one row per token. Replace the tied embedding's
    Gather(axis 1) + Transpose on the float matrix by a row Gather on B and the scales,
    dequantized and reshaped to [batch, seq, hidden]; then drop the float matrix."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    inits = _initializers(proto)
    node = next((n for n in proto.graph.node if n.name.endswith("__tied")), None)
    if node is None:
        return False
    w = node.input[0]
    head = next(
        (n for n in proto.graph.node if n.op_type == "MatMulNBits" and n.input[1] == f"{w}_Q8"),
        None,
    )
    transpose = next(
        (n for n in _consumers(proto, node.output[0]) if n.op_type == "Transpose"), None
    )
    if head is None or transpose is None:
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    b_q, scales = head.input[1], head.input[2]
    zp = head.input[3] if len(head.input) > 3 and head.input[3] else None
    if attrs.get("bits") != 8 or (zp is not None and zp not in inits):
        return False
    _, blocks, block = inits[b_q].dims
    hidden = int(attrs["K"])
    ids, out, name = node.input[1], transpose.output[0], f"{node.name}_q"
    consts = {
        f"{name}_shape": np.array([0, 0, -1], dtype=np.int64),
        f"{name}_axes": np.array([-1], dtype=np.int64),
    }
    new = [
        helper.make_node("Gather", [b_q, ids], [f"{out}__q"], name=name, axis=0),
        helper.make_node(
            "Cast", [f"{out}__q"], [f"{out}__f"], name=f"{name}_cast", to=TensorProto.FLOAT
        ),
    ]
    if zp is None:
        consts[f"{name}_zp"] = np.array(128.0, dtype=np.float32)
        new.append(
            helper.make_node("Sub", [f"{out}__f", f"{name}_zp"], [f"{out}__c"], name=f"{name}_sub")
        )
    else:
        new += [
            helper.make_node("Gather", [zp, ids], [f"{out}__zq"], name=f"{name}_zg", axis=0),
            helper.make_node(
                "Cast", [f"{out}__zq"], [f"{out}__zf"], name=f"{name}_zc", to=TensorProto.FLOAT
            ),
            helper.make_node(
                "Unsqueeze", [f"{out}__zf", f"{name}_axes"], [f"{out}__z"], name=f"{name}_zu"
            ),
            helper.make_node("Sub", [f"{out}__f", f"{out}__z"], [f"{out}__c"], name=f"{name}_sub"),
        ]
    new += [
        helper.make_node("Gather", [scales, ids], [f"{out}__sg"], name=f"{name}_s", axis=0),
        helper.make_node(
            "Unsqueeze", [f"{out}__sg", f"{name}_axes"], [f"{out}__s"], name=f"{name}_su"
        ),
        helper.make_node("Mul", [f"{out}__c", f"{out}__s"], [f"{out}__d"], name=f"{name}_mul"),
    ]
    flat = out if blocks * block == hidden else f"{out}__flat"
    new.append(
        helper.make_node("Reshape", [f"{out}__d", f"{name}_shape"], [flat], name=f"{name}_flat")
    )
    if flat != out:  # the last block is padded: keep the first `hidden` values
        consts[f"{name}_starts"] = np.array([0], dtype=np.int64)
        consts[f"{name}_ends"] = np.array([hidden], dtype=np.int64)
        new.append(
            helper.make_node(
                "Slice",
                [flat, f"{name}_starts", f"{name}_ends", f"{name}_axes"],
                [out],
                name=f"{name}_slice",
            )
        )
    for k, v in consts.items():
        proto.graph.initializer.append(numpy_helper.from_array(v, k))
    _replace_node(proto, node, new)
    proto.graph.node.remove(transpose)
    _drop_if_unused(proto, w)
    return True


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
    q = quantize_onnx(
        proto,
        nodes=found,
        per_channel=cfg.per_channel,
        kernel=cfg.kernel,
        block_size=cfg.block_size,
    )
    del proto
    head_name = _module_name(model, getattr(model, "get_output_embeddings", lambda: None)())
    tied_q = tied_embedding_quantized(q)
    if tied_q is True:
        notes.append(
            f"tied input embedding + {head_name} stored once as int8; the embedding lookup "
            "dequantizes the gathered rows with the lm_head's per-row scales"
        )
    elif tied_q is False:
        notes.append(
            f"tied input embedding + {head_name} stored once in float32 ({head_name} not quantized)"
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
    return {
        "method": "onnx_int8",
        "summary": f"ONNX Runtime {cfg.kernel} int8: {grid}, {len(found)} MatMul nodes "
        f"({n_params / 1e6:.1f}M weights), {'with' if kv_cache else 'WITHOUT'} KV cache",
        "layers": len(found),
        "weights_quantized": n_params,
        "kernel": f"onnxruntime {ort.__version__} {ops} ({wrapper.providers[0]})",
        "compute_dtype": "float32",
        "runtime": runtime,
        "kv_cache": kv_cache,
        "export_seconds": export_s,
        "quantize_seconds": quant_s,
        "onnx_bytes": len(data),
        "notes": notes,
        "seconds": time.perf_counter() - t0,
    }
