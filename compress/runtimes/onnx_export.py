"""Export a Hugging Face causal LM to ONNX with a KV cache (torch's dynamo exporter).

The graph's interface is documented in `compress.runtimes.onnxruntime`; the rewrites applied
after export (weight transposes folded, MatMul nodes named after their torch module, a tied
embedding reading the lm_head's matrix) are in `compress.runtimes.onnx_graph`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from compress.runtimes.onnx_common import require_package
from compress.runtimes.onnx_graph import (
    fold_weight_transposes,
    name_linear_nodes,
    share_tied_embedding,
)

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)


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


def export_onnx(model: nn.Module, *, opset: int = 18, kv_cache: bool = True) -> Any:
    """Export a float32 HF causal LM to an `onnx.ModelProto` (weights inline, not quantized).

    Interface: see `compress.runtimes.onnxruntime`. MatMul nodes of Linear layers are named
    after their torch module (e.g. `model.layers.0.mlp.up_proj`); a tied input embedding
    shares the lm_head's weight. Raises if the exporter fails.
    """
    import torch
    from torch.export import Dim

    require_package("onnxscript")
    onnx = require_package("onnx")
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
    fold_weight_transposes(proto)
    name_linear_nodes(proto)
    for node in proto.graph.node:  # exporter stack traces: megabytes of text, not needed
        del node.metadata_props[:]
        node.doc_string = ""
    if _is_tied(model):
        share_tied_embedding(proto, module_name(model, model.get_output_embeddings()))
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


def module_name(model: nn.Module, module: nn.Module) -> str | None:
    return next((n for n, m in model.named_modules() if m is module), None)


def _is_tied(model) -> bool:
    emb = getattr(model, "get_input_embeddings", lambda: None)()
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if emb is None or head is None:
        return False
    w_e, w_h = getattr(emb, "weight", None), getattr(head, "weight", None)
    return w_e is not None and w_h is not None and w_e.data_ptr() == w_h.data_ptr()
