"""`llamacpp`: run the variant in llama.cpp, as a GGUF file, for evaluation and profiling.

    stages:
      - {method: gptq, bits: 4, group_size: 32}
      - {method: llamacpp}                       # our GPTQ int4 as Q4_0, run by llama.cpp

`weights: model` (default) writes the model as the earlier stages left it with the GGUF
writer of `compress export` (our integer codes kept exactly where a GGUF block format holds
them, see `compress.export.gguf_blocks`). `weights: source` runs the GGUF file the model was
loaded from, untouched (e.g. the packaged Q4_1): the reference a llama.cpp user starts from.
`quantize: Q4_0` (etc.) then applies llama.cpp's own quantiser (`llama_model_quantize`, what
`llama-quantize` runs) to that file: the baseline our own methods have to beat.

After this stage the handle runs in llama.cpp (`compress.runtimes.llamacpp`): perplexity,
KLD, tasks and the paired timing measure llama.cpp, and the saved folder holds model.gguf.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from compress._config import Strict
from compress.errors import BadInput
from compress.methods.registry import StageContext, StageRecord, register

log = logging.getLogger(__name__)

#: llama.cpp file types (`enum llama_ftype`) offered to `quantize`
LLAMA_FTYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q4_K_M": 15, "Q6_K": 18}


class LlamaCppConfig(Strict):
    method: Literal["llamacpp"] = "llamacpp"
    weights: Literal["model", "source"] = Field(
        "model",
        description="model: the model as earlier stages left it, written as GGUF; source: the "
        "GGUF file the model was loaded from, untouched",
    )
    quantize: Literal[tuple(LLAMA_FTYPES)] | None = Field(  # type: ignore[valid-type]
        None,
        description="apply llama.cpp's own quantiser (llama-quantize) to that file: the "
        "reference GGUF users get without this tool",
    )
    float_type: Literal["f16", "f32"] = Field("f16", description="weights that stay float")
    n_ctx: int = Field(4096, ge=256, description="llama.cpp context (eval windows must fit)")


def _source_file(handle) -> Path:
    src = handle.source
    if src.kind != "gguf" or not src.gguf_file or src.path is None:
        raise BadInput(
            f"llamacpp needs a model loaded from a .gguf file (its tokenizer and metadata are "
            f"copied into the GGUF it writes); {src.spec!r} is a {src.kind} model.",
            fix="Use a GGUF model (e.g. smollm2-135m), or convert the model with llama.cpp's "
            "convert_hf_to_gguf.py.",
        )
    return Path(src.path) / src.gguf_file


def _check(handle, cfg: LlamaCppConfig) -> None:
    if handle.runtime != "torch":
        raise BadInput(
            f"llamacpp takes a torch model; this variant already runs in {handle.runtime}.",
            fix="Put llamacpp last, once, and not after onnx_int8.",
        )
    if cfg.weights == "source" and handle.stages:
        done = ", ".join(s.get("method", "?") for s in handle.stages)
        raise BadInput(
            f"llamacpp weights: source runs the original GGUF file, which ignores the earlier "
            f"stages ({done}).",
            fix="Use weights: model to run what the earlier stages produced.",
        )


def _llama_quantize(src: Path, dst: Path, ftype: str) -> float:
    """llama.cpp's own quantiser, as `llama-quantize --allow-requantize SRC DST TYPE`."""
    from compress.runtimes.llamacpp import import_llama

    llama_cpp = import_llama()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPES[ftype]
    params.allow_requantize = True
    params.nthread = 0
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc} for {ftype}")
    return time.perf_counter() - t0


@register(LlamaCppConfig)
def apply(ctx: StageContext, cfg: LlamaCppConfig) -> StageRecord:
    from compress.export.gguf_model import write_gguf
    from compress.profile.memory import weight_bytes
    from compress.runtimes.llamacpp import LlamaCppCausalLM, describe_build, import_llama

    import_llama()  # exit 2 with the install command when it is missing
    handle = ctx.model
    _check(handle, cfg)
    source = _source_file(handle)
    t0 = time.perf_counter()
    before = weight_bytes(handle.model)
    if ctx.scratch_dir is not None:
        Path(ctx.scratch_dir).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="llamacpp-", dir=ctx.scratch_dir))
    notes, details = [], {}
    if cfg.weights == "source":
        path = source
        notes.append(f"runs the source file {source.name} untouched")
    else:
        path = folder / "model.gguf"
        written = write_gguf(handle.model, source, path, float_type=cfg.float_type)
        details["gguf"] = {k: v for k, v in written.items() if k != "tensors"}
        notes.append(_mapping_note(written))
    if cfg.quantize:
        quantized = folder / f"model-{cfg.quantize}.gguf"
        secs = _llama_quantize(path, quantized, cfg.quantize)
        notes.append(
            f"quantised by llama.cpp's llama_model_quantize to {cfg.quantize} in {secs:.1f} s"
        )
        path = quantized
    model = LlamaCppCausalLM(path, handle.model.config, n_ctx=cfg.n_ctx)
    handle.model, handle.runtime = model, "llamacpp"
    build = describe_build()
    notes.append(f"measured in llama.cpp: {build}")
    return StageRecord.make(
        method="llamacpp",
        summary=f"llama.cpp runs {path.name} ({model.weight_nbytes() / 1e6:.1f} MB of tensors)",
        kernel=f"llama.cpp ({build.split(' (')[0]})",
        runtime="llama.cpp",
        gguf_file_bytes=path.stat().st_size,
        notes=notes,
        seconds=time.perf_counter() - t0,
        **details,
    ).measured(before, model.weight_nbytes())


def _mapping_note(written: dict) -> str:
    types = ", ".join(f"{n} x {t}" for t, n in sorted(written["tensor_types"].items()))
    requant = written["requantized"]
    how = (
        "every quantized weight kept its integer codes (fp16 scales)"
        if not requant
        else f"{len(requant)} weight(s) re-quantised (no exact GGUF block format)"
    )
    worst = written["worst_relative_error"]
    return (
        f"GGUF written: {types}; {how}; largest relative error {worst['value']:.2e} "
        f"({worst['tensor']})"
    )
