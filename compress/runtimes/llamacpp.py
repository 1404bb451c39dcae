"""llama.cpp as an execution runtime: a GGUF file run by `llama-cpp-python` behind a
torch-shaped `nn.Module`, so evaluation (perplexity, KLD, tasks) and paired profiling run
unchanged and measure what a llama.cpp / Ollama deployment would run.

`LlamaCppCausalLM.forward(input_ids, past_key_values=..., use_cache=..., logits_to_keep=...)`
answers like a transformers causal LM: `.logits` float32 [batch, seq (or kept), vocab] and
`.past_key_values` a `LlamaCppCache`. llama.cpp holds the KV cache itself (one sequence), so
a cache object only records how many positions it covers; continuing from any other point
is refused. Logits are computed only for the positions asked for (`logits_to_keep`), as
llama-bench computes none but the last: prefill timing is not charged for 49k-wide rows
nobody reads. Batches of several rows without a cache (task scoring) run row by row; decode
with a cache is one row (the runtime's own server batches requests, not this wrapper).

Threads: `n_threads` = `torch.get_num_threads()` when the context is built, rebuilt when
that changes (`profile.threads`), as the ONNX Runtime wrapper does.

Build note (see README): on an Intel host with AMX, llama.cpp built with native CPU flags
crashed with "invalid opcode"; build with `GGML_NATIVE=OFF` and explicit AVX2/AVX-512 flags.
"""

from __future__ import annotations

import atexit
import json
import logging
import weakref
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

GGUF_FILE = "model.gguf"
SETTINGS = "llamacpp.json"
INSTALL = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=ON -DGGML_AMX_TILE=OFF '
    '-DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" pip install llama-cpp-python   '
    "(or pip install -e .[llamacpp]; a source build of several minutes, see README)"
)


def import_llama() -> Any:
    """`llama_cpp`, or BadInput (exit 2) naming the install command."""
    try:
        import llama_cpp
    except ImportError as e:
        raise BadInput(
            f"The llama.cpp runtime needs the 'llama-cpp-python' package ({e}).", fix=INSTALL
        ) from None
    return llama_cpp


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def describe_build() -> str:
    llama_cpp = import_llama()
    info = llama_cpp.llama_print_system_info()
    info = info.decode() if isinstance(info, bytes) else str(info)
    return f"llama-cpp-python {llama_cpp.__version__} ({info.strip()})"


def gguf_tensor_bytes(path: str | Path) -> int:
    """Bytes of the tensors in a GGUF file (the weights llama.cpp maps), metadata excluded."""
    import gguf

    return int(sum(t.n_bytes for t in gguf.GGUFReader(str(path)).tensors))


_OPEN: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Free every llama.cpp model before interpreter shutdown: llama-cpp-python's own
    finalizer prints a TypeError when it runs after its module globals are gone."""
    for m in list(_OPEN):
        m.close()


@dataclass
class LlamaCppCache:
    """How many positions of llama.cpp's own KV cache this output covers."""

    n_past: int

    def get_seq_length(self) -> int:
        return self.n_past


@dataclass
class LlamaCppOutput:
    logits: torch.Tensor
    past_key_values: LlamaCppCache | None = None


class LlamaCppCausalLM(nn.Module):
    """A GGUF causal LM executed by llama.cpp. No torch parameters; `weight_nbytes()` reports
    the GGUF tensors' bytes."""

    #: the profiler skips larger batch sizes, saying why (one KV cache, one sequence)
    max_batch_size = 1

    def __init__(self, gguf_path: str | Path, config: Any, *, n_ctx: int = 4096):
        super().__init__()
        self.config = config
        self.path = str(gguf_path)
        self.n_ctx = n_ctx
        self._threads = -1
        self._llm = None
        self._n_past = 0
        self._weight_nbytes = gguf_tensor_bytes(self.path)
        self._build()
        _OPEN.add(self)

    def _build(self) -> None:
        llama_cpp = import_llama()
        threads = torch.get_num_threads()
        if self._llm is not None:
            self._llm.close()
            self._llm = None
        self._llm = llama_cpp.Llama(
            model_path=self.path,
            n_ctx=self.n_ctx,
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=False,
            verbose=False,
        )
        self._threads, self._n_past = threads, 0
        self._version = llama_cpp.__version__
        self.vocab = int(getattr(self.config, "vocab_size", 0) or self._llm.n_vocab())

    @property
    def llm(self) -> Any:
        if torch.get_num_threads() != self._threads:
            log.info("torch threads changed to %d: rebuilding llama.cpp", torch.get_num_threads())
            self._build()
        return self._llm

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def runtime(self) -> str:
        return f"llama.cpp (llama-cpp-python {self._version}, {self._threads} threads, CPU)"

    def weight_nbytes(self) -> int:
        return self._weight_nbytes

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()  # else llama-cpp-python prints a TypeError at exit
            self._llm = None

    # -- forward ------------------------------------------------------------------------

    def _decode(self, tokens: list[int], n_past: int, keep: int) -> np.ndarray:
        """Feed `tokens` after `n_past` cached positions; logits of the last `keep` (0: all)."""
        llm = self.llm
        if n_past + len(tokens) > self.n_ctx:
            raise BadInput(
                f"llama.cpp context holds {self.n_ctx} tokens; this call needs "
                f"{n_past + len(tokens)}.",
                fix="Raise the llamacpp stage's n_ctx.",
            )
        llm._ctx.kv_cache_seq_rm(-1, n_past, -1)
        want_from = 0 if keep <= 0 else max(len(tokens) - keep, 0)
        batch, rows = llm._batch, []
        for i in range(0, len(tokens), llm.n_batch):
            chunk = tokens[i : i + llm.n_batch]
            batch.set_batch(batch=chunk, n_past=n_past + i, logits_all=False)
            flags = [i + j >= want_from for j in range(len(chunk))]
            for j, flag in enumerate(flags):  # logits only where they are read
                batch.batch.logits[j] = flag
            llm._ctx.decode(batch)
            n_out = sum(flags)
            if n_out:
                out = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_out * self.vocab,))
                rows.append(out.reshape(n_out, self.vocab).copy())
        self._n_past = n_past + len(tokens)
        logits = np.concatenate(rows, axis=0)
        return logits[-keep:] if keep > 0 else logits

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: LlamaCppCache | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        **ignored: Any,
    ) -> LlamaCppOutput:
        ids = input_ids.detach().cpu()
        if past_key_values is not None:
            if ids.shape[0] != 1:
                raise BadInput("the llama.cpp runtime decodes one sequence (batch 1) with a cache")
            if past_key_values.n_past != self._n_past:
                raise StageFailed(
                    f"llama.cpp holds one KV cache of {self._n_past} positions; a call "
                    f"continued from {past_key_values.n_past}"
                )
            n_past = past_key_values.n_past
        else:
            n_past = 0
        if ids.shape[0] > 1 and use_cache:
            raise BadInput("the llama.cpp runtime keeps a KV cache for one sequence (batch 1)")
        rows = []
        for r in range(ids.shape[0]):
            row = ids[r]
            mask = attention_mask[r].bool() if attention_mask is not None else None
            if mask is not None and past_key_values is None and not bool(mask.all()):
                rows.append(self._padded_row(row, mask[-row.shape[0] :], logits_to_keep))
                continue
            rows.append(torch.from_numpy(self._decode(row.tolist(), n_past, logits_to_keep)))
        logits = torch.stack(rows)
        cache = LlamaCppCache(self._n_past) if use_cache else None
        return LlamaCppOutput(logits=logits, past_key_values=cache)

    def _padded_row(self, row: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
        """A padded row of a batch: real tokens through llama.cpp, pads get zero logits."""
        real = self._decode(row[mask].tolist(), 0, 0)
        full = torch.zeros(row.shape[0], self.vocab)
        full[mask] = torch.from_numpy(real)
        return full[-keep:] if keep > 0 else full

    def extra_repr(self) -> str:
        return f"{Path(self.path).name}, n_ctx={self.n_ctx}, threads={self._threads}"


def save(handle: ModelHandle, folder: str | Path) -> None:
    """Copy the GGUF file into the saved model folder (`model.gguf`)."""
    import shutil

    model = handle.model
    if not isinstance(model, LlamaCppCausalLM):
        raise StageFailed(f"handle.runtime is 'llamacpp' but the model is {type(model).__name__}")
    shutil.copyfile(model.path, Path(folder) / GGUF_FILE)
    (Path(folder) / SETTINGS).write_text(json.dumps({"n_ctx": model.n_ctx}))


def load(path: str | Path, device: str = "cpu") -> ModelHandle:
    """Load a folder written by `save_compressed` for this runtime."""
    from transformers import AutoConfig, AutoTokenizer

    from compress.handle import ModelHandle, ModelSource

    path = Path(path)
    if not (path / GGUF_FILE).is_file():
        raise StageFailed(f"{path}: no {GGUF_FILE}; not a llama.cpp model folder.")
    if device != "cpu":
        log.warning("the llama.cpp runtime here is a CPU build; %s ignored", device)
    manifest = json.loads((path / "compress_quant.json").read_text())
    config = AutoConfig.from_pretrained(path)
    settings = path / SETTINGS
    n_ctx = json.loads(settings.read_text())["n_ctx"] if settings.is_file() else 4096
    model = LlamaCppCausalLM(path / GGUF_FILE, config, n_ctx=n_ctx)
    src = manifest.get("source", {})
    tokenizer = AutoTokenizer.from_pretrained(path) if any(path.glob("tokenizer*")) else None
    return ModelHandle(
        model=model,
        tokenizer=tokenizer,
        source=ModelSource(
            spec=str(path),
            kind="compressed",
            path=path,
            architecture=src.get("architecture", "causal_lm"),
            note=f"compressed by compress from {src.get('spec', '?')}; runs in llama.cpp",
        ),
        dtype="float32",
        device="cpu",
        stages=manifest.get("stages", []),
        runtime="llamacpp",
    )
