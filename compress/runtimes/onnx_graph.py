"""ONNX graph rewrites and ONNX Runtime's int8 weight quantizers (`quantize_onnx`).

Pure functions on an `onnx.ModelProto`: fold the exporter's weight transposes, name each
Linear's MatMul after its torch module, make a tied input embedding read the lm_head's
matrix (float, then int8 once quantized), and quantize the chosen MatMuls with one of two ORT
kernels (see `compress.methods.onnx_int8`).
"""

from __future__ import annotations

import ast
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.runtimes.onnx_common import NBITS_ACCURACY, WRAPPER_PREFIX, require_package

if TYPE_CHECKING:
    from onnx import ModelProto

log = logging.getLogger(__name__)


def _initializers(proto) -> dict[str, Any]:
    return {t.name: t for t in proto.graph.initializer}


def fold_weight_transposes(proto: ModelProto) -> int:
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


def name_linear_nodes(proto: ModelProto) -> None:
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


def share_tied_embedding(proto: ModelProto, head_name: str | None) -> bool:
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


def quantize_onnx(
    proto: ModelProto,
    *,
    nodes: list[str],
    per_channel: bool = True,
    kernel: str = "dynamic",
    block_size: int = 32,
) -> ModelProto:
    """Quantize the MatMul nodes named in `nodes` to int8 weights; returns a new ModelProto
    (weights inline) and keeps the input's metadata.

    kernel "dynamic": `quant_pre_process` + `quantize_dynamic` (symmetric int8 weights, per
    output channel when `per_channel`; uint8 activations, one scale per tensor at run time).
    kernel "matmul_nbits": `MatMulNBitsQuantizer(bits=8)` (symmetric int8 weights with one
    scale per `block_size` inputs; int8 activations per block at run time, accuracy_level 4).
    A tied embedding that shared the lm_head's float matrix is moved onto its int8 one.
    """
    onnx = require_package("onnx")
    require_package("onnxruntime")
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


def tied_embedding_quantized(proto: ModelProto) -> bool | None:
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
    from onnx import helper, numpy_helper

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
    new, consts = _nbits_row_gather(name, ids, out, (b_q, scales, zp), blocks * block, hidden)
    for k, v in consts.items():
        proto.graph.initializer.append(numpy_helper.from_array(v, k))
    _replace_node(proto, node, new)
    proto.graph.node.remove(transpose)
    _drop_if_unused(proto, w)
    return True


def _nbits_row_gather(
    name: str,
    ids: str,
    out: str,
    weights: tuple[str, str, str | None],
    padded: int,
    hidden: int,
) -> tuple[list[Any], dict[str, Any]]:
    """Nodes gathering rows `ids` of a MatMulNBits weight (B, scales, zero points or None) and
    dequantizing them into `out` [batch, seq, hidden]; (nodes, new constant initializers)."""
    import numpy as np
    from onnx import TensorProto, helper

    b_q, scales, zp = weights
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
    flat = out if padded == hidden else f"{out}__flat"
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
    return new, consts
