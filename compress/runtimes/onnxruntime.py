"""ONNX Runtime as an execution runtime: a causal LM exported to ONNX, run by an
`onnxruntime.InferenceSession` behind a torch-shaped `nn.Module`.

The graph's interface (written by `compress.runtimes.onnx_export.export_onnx`):

    inputs   input_ids [batch, seq] int64, attention_mask [batch, past + seq] int64,
             position_ids [batch, seq] int64, logits_index [keep] int64 (positions whose
             logits are computed), past_key_values.{i}.key / .value [batch, kv_heads, past, dim]
    outputs  logits [batch, keep, vocab] float32, present.{i}.key / .value
             [batch, kv_heads, past + seq, dim]

An empty past (length 0) is a prefill. A graph exported without a KV cache has only the first
four inputs and `logits`; the wrapper then re-runs the whole prefix on every decode step.

`OrtCausalLM.forward(input_ids, use_cache=..., past_key_values=...)` answers like a
transformers causal LM (`.logits` as a float32 torch tensor, `.past_key_values` an `OrtCache`),
so evaluation and profiling run unchanged. It holds no torch weights: `weight_nbytes()` reports
the bytes of the graph's initializers, which `compress.profile.memory.weight_bytes` adds up.

The saved folder: config.json + tokenizer files + compress_quant.json (written by
`compress.quant.serialize`) and `model.onnx` (weights inline), written by `save` here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from compress.errors import BadInput, StageFailed

if TYPE_CHECKING:
    from compress.handle import ModelHandle

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
#: keys of the ONNX model's metadata_props written by the exporter
META_KV = "compress.kv_cache"
META_LAYERS = "compress.num_layers"
META_WEIGHTS = "compress.weight_nbytes"
INSTALL = "pip install onnxruntime  (or: pip install -e .[onnx])"


def import_ort() -> Any:
    """`onnxruntime`, or a StageFailed naming the package and the pip command."""
    try:
        import onnxruntime
    except ImportError as e:
        raise BadInput(
            f"The onnxruntime runtime needs the 'onnxruntime' package ({e}).", fix=INSTALL
        ) from None
    return onnxruntime


def providers_for(device: str) -> list[str]:
    """CUDAExecutionProvider (then CPU) when the device is CUDA and the provider exists,
    else CPUExecutionProvider alone."""
    ort = import_ort()
    if torch.device(device).type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        log.warning(
            "device %s requested but this onnxruntime has no CUDAExecutionProvider "
            "(install onnxruntime-gpu); running on CPUExecutionProvider",
            device,
        )
    return ["CPUExecutionProvider"]


def describe_runtime(providers: list[str]) -> str:
    """'onnxruntime 1.31.1 CPUExecutionProvider' (the provider actually used first)."""
    ort = import_ort()
    return f"onnxruntime {ort.__version__} {providers[0]}"


def initializer_nbytes(model: Any) -> int:
    """Bytes of an onnx.ModelProto's weights: graph initializers plus tensor-valued Constant
    nodes (inline data; external data counted by its declared length)."""
    from onnx import numpy_helper

    def size(t) -> int:
        if t.external_data:
            ext = {e.key: e.value for e in t.external_data}
            if "length" in ext:
                return int(ext["length"])
        return int(numpy_helper.to_array(t).nbytes) if not t.raw_data else len(t.raw_data)

    total = sum(size(t) for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.HasField("t"):
                    total += size(a.t)
    return total


@dataclass
class OrtCache:
    """The KV cache between calls: `tensors` holds key, value per layer (numpy, float32), or,
    for a graph exported without a cache, `ids` holds every token id seen so far."""

    tensors: list[np.ndarray] | None = None
    ids: np.ndarray | None = None

    def get_seq_length(self) -> int:
        if self.tensors is not None:
            return int(self.tensors[0].shape[2]) if self.tensors else 0
        return 0 if self.ids is None else int(self.ids.shape[1])


@dataclass
class OrtOutput:
    logits: torch.Tensor
    past_key_values: OrtCache | None = None


class OrtCausalLM(nn.Module):
    """A causal LM executed by ONNX Runtime. No parameters or buffers: the weights live in the
    InferenceSession; `weight_nbytes()` reports them.

    `source` is the serialized ONNX model (bytes) or the path of a .onnx file; the session is
    (re)built with `intra_op_num_threads = torch.get_num_threads()`, and rebuilt when torch's
    thread count changes (e.g. `profile.threads`), so ORT always uses what torch would.
    """

    def __init__(
        self,
        source: bytes | str | Path,
        config: Any,
        *,
        device: str = "cpu",
        weight_nbytes: int | None = None,
    ):
        super().__init__()
        self.config = config
        self._source = source if isinstance(source, bytes) else str(source)
        self._device = torch.device(device)
        self.providers = providers_for(device)
        self._threads = -1
        self._session = None
        self._build_session()
        meta = self._session.get_modelmeta().custom_metadata_map
        inputs = {i.name for i in self._session.get_inputs()}
        self.kv_cache = "past_key_values.0.key" in inputs
        self.num_layers = int(meta.get(META_LAYERS, 0)) or sum(
            1 for n in inputs if n.startswith("past_key_values.") and n.endswith(".key")
        )
        self._weight_nbytes = weight_nbytes
        if self._weight_nbytes is None and META_WEIGHTS in meta:
            self._weight_nbytes = int(meta[META_WEIGHTS])
        self._kv_shape: tuple[int, int] | None = None
        if self.kv_cache:
            shape = next(
                i.shape for i in self._session.get_inputs() if i.name == "past_key_values.0.key"
            )
            self._kv_shape = (int(shape[1]), int(shape[3]))

    # -- session ------------------------------------------------------------------------

    def _build_session(self) -> None:
        ort = import_ort()
        threads = torch.get_num_threads()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no arena: it keeps its peak (e.g. a 2048-token prefill, ~1.3 GB for SmolLM2) for good;
        # measured: same decode speed, RSS after a 2048-token forward 0.95 GB instead of 2.3 GB
        opts.enable_cpu_mem_arena = False
        opts.log_severity_level = 3
        self._session = None  # free the old session's weights before building the new one
        self._session = ort.InferenceSession(
            self._source, sess_options=opts, providers=self.providers
        )
        self.providers = list(self._session.get_providers())
        self._threads = threads

    @property
    def session(self) -> Any:
        if torch.get_num_threads() != self._threads:
            log.info(
                "torch threads changed to %d: rebuilding the ORT session", torch.get_num_threads()
            )
            self._build_session()
        return self._session

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def runtime(self) -> str:
        return describe_runtime(self.providers)

    def weight_nbytes(self) -> int:
        """Bytes of the ONNX graph's initializers (the weights as ORT holds them)."""
        if self._weight_nbytes is None:
            import onnx

            src = self._source
            proto = onnx.load_from_string(src) if isinstance(src, bytes) else onnx.load(src)
            self._weight_nbytes = initializer_nbytes(proto)
        return self._weight_nbytes

    def onnx_bytes(self) -> bytes:
        if isinstance(self._source, bytes):
            return self._source
        return Path(self._source).read_bytes()

    # -- forward ------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: OrtCache | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        position_ids: torch.Tensor | None = None,
        **ignored: Any,
    ) -> OrtOutput:
        """Like a transformers causal LM forward (batch-first ids, greedy-decode ready).

        `logits_to_keep` = k > 0 computes logits for the last k positions only (0 = all).
        `attention_mask` covers past + new tokens (1 = attend); `position_ids` default to
        past length + 0..seq-1, as transformers does from the cache position.
        """
        if past_key_values is not None and not isinstance(past_key_values, OrtCache):
            raise TypeError(
                f"OrtCausalLM takes the OrtCache it returned, not {type(past_key_values).__name__}"
            )
        ids = _np_int64(input_ids)
        batch, seq = ids.shape
        if not self.kv_cache:
            return self._forward_no_cache(
                ids, input_ids.device, attention_mask, past_key_values, use_cache, logits_to_keep
            )
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        mask = (
            np.ones((batch, past + seq), dtype=np.int64)
            if attention_mask is None
            else _np_int64(attention_mask)
        )
        if position_ids is None:
            pos = np.broadcast_to(np.arange(past, past + seq, dtype=np.int64), (batch, seq))
            pos = np.ascontiguousarray(pos)
        else:
            pos = _np_int64(position_ids)
        feeds: dict[str, np.ndarray] = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": pos,
            "logits_index": _keep(seq, logits_to_keep),
        }
        if past_key_values is not None:
            tensors = past_key_values.tensors
        else:
            heads, dim = self._kv_shape
            empty = np.zeros((batch, heads, 0, dim), dtype=np.float32)
            tensors = [empty] * (2 * self.num_layers)
        for i in range(self.num_layers):
            feeds[f"past_key_values.{i}.key"] = tensors[2 * i]
            feeds[f"past_key_values.{i}.value"] = tensors[2 * i + 1]
        outs = self.session.run(None, feeds)
        logits = torch.from_numpy(outs[0]).to(input_ids.device)
        cache = OrtCache(tensors=outs[1:]) if use_cache else None
        return OrtOutput(logits=logits, past_key_values=cache)

    def _forward_no_cache(self, ids, device, attention_mask, cache, use_cache, logits_to_keep):
        """No KV cache in the graph: run the whole sequence (cached ids + new ids) again."""
        seq = ids.shape[1]
        if cache is not None and cache.ids is not None:
            ids = np.concatenate([cache.ids, ids], axis=1)
        total = ids.shape[1]
        mask = (
            np.ones_like(ids) if attention_mask is None else _np_int64(attention_mask)[:, -total:]
        )
        pos = np.ascontiguousarray(
            np.broadcast_to(np.arange(total, dtype=np.int64), ids.shape), dtype=np.int64
        )
        keep = _keep(seq, logits_to_keep) + (total - seq)
        feeds = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": pos,
            "logits_index": keep,
        }
        (logits,) = self.session.run(["logits"], feeds)
        out_cache = OrtCache(ids=ids) if use_cache else None
        return OrtOutput(logits=torch.from_numpy(logits).to(device), past_key_values=out_cache)

    def extra_repr(self) -> str:
        return f"{self.runtime}, kv_cache={self.kv_cache}, layers={self.num_layers}"


def _np_int64(t: Any) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    return np.ascontiguousarray(t, dtype=np.int64)


def _keep(seq: int, logits_to_keep: int) -> np.ndarray:
    k = seq if not logits_to_keep or logits_to_keep > seq else int(logits_to_keep)
    return np.arange(seq - k, seq, dtype=np.int64)


# -- save / load (called by compress.quant.serialize) -------------------------------------


def save(handle: ModelHandle, folder: str | Path) -> None:
    """Write `model.onnx` (the quantized graph, weights inline) into `folder`."""
    model = handle.model
    if not isinstance(model, OrtCausalLM):
        raise StageFailed(
            f"handle.runtime is 'onnxruntime' but the model is a {type(model).__name__}, "
            "not an OrtCausalLM."
        )
    (Path(folder) / ONNX_FILE).write_bytes(model.onnx_bytes())


def load(path: str | Path, device: str = "cpu") -> ModelHandle:
    """Load a folder written by `compress.quant.serialize.save_compressed` for this runtime."""
    from transformers import AutoConfig, AutoTokenizer

    from compress.handle import ModelHandle, ModelSource

    path = Path(path)
    onnx_file = path / ONNX_FILE
    if not onnx_file.is_file():
        raise StageFailed(f"{path}: no {ONNX_FILE}; not an onnxruntime model folder.")
    manifest = json.loads((path / "compress_quant.json").read_text())
    config = AutoConfig.from_pretrained(path)
    model = OrtCausalLM(onnx_file, config, device=device)
    src = manifest.get("source", {})
    tokenizer = None
    if any(path.glob("tokenizer*")):
        tokenizer = AutoTokenizer.from_pretrained(path)
    return ModelHandle(
        model=model,
        tokenizer=tokenizer,
        source=ModelSource(
            spec=str(path),
            kind="compressed",
            path=path,
            architecture=src.get("architecture", "causal_lm"),
            note=f"compressed by compress from {src.get('spec', '?')}; runs in {model.runtime}",
        ),
        dtype=manifest.get("compute_dtype", "float32"),
        device=device,
        stages=manifest.get("stages", []),
        runtime="onnxruntime",
    )
