"""`--max-memory`: an estimate of a run's peak memory, made before anything loads, and the
choice between running in memory and streaming the model layer by layer from disk.

The estimate adds, in bytes: what this process already holds (interpreter, torch,
transformers: measured), the weights that must be in memory at once (every model in memory;
one block at a time when streamed, in float32, the baseline's dtype) and the largest working
set of a phase: calibration (the layer inputs and outputs of every sample, one chunk's MLP
activations, and what the method collects or solves: for gptq the Hessian of the widest
Linear with its inverse Cholesky factor and the widest group's weights, see `_method_bytes`
for each method) or evaluation (one
window's MLP activations and its logits for two models with their log-softmaxes). Shapes come
from the model's config and its meta skeleton; nothing is loaded. It is an estimate: the
report records it beside the measured peak RSS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from compress.errors import BadInput

#: methods that run on a model streamed from disk: those whose stage walks the decoder
#: through the shared calibration loop and nothing else, rtn and magnitude (stream.walk), and
#: structured (scores in the loop, then slices layer by layer and renumbers the streamed blocks)
STREAMABLE = ("gptq", "awq", "smoothquant", "wanda", "sparsegpt", "rtn", "magnitude",
              "structured")  # fmt: skip
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
          "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]I?)?B?\s*$", re.IGNORECASE)


def parse_size(text: str, flag: str = "--max-memory") -> int:
    """'2GiB', '2G' (10^9), '1536MiB', '2147483648' -> bytes."""
    m = _SIZE.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise BadInput(
            f"{flag}: '{text}' is not a size.",
            fix="Write a number with a unit, e.g. 2GiB, 1536MiB or 4GB (GiB = 2^30 bytes).",
        )
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


@dataclass
class Plan:
    """How a run fits in `cap` bytes: `mode` and the estimates behind it."""

    cap: int | None
    mode: Literal["memory", "stream"]
    in_memory: int
    streamed: int | None
    parts: dict[str, int] = field(default_factory=dict)  # the chosen mode's terms
    folder: str | None = None  # the safetensors folder a streamed run reads

    def lines(self) -> list[str]:
        cap = f"memory cap {gib(self.cap)}" if self.cap else "no memory cap"
        streamed = f", layer by layer from disk {gib(self.streamed)}" if self.streamed else ""
        out = [f"{cap}: estimated peak in memory {gib(self.in_memory)}{streamed}"]
        out.append(
            "runs "
            + ("in memory" if self.mode == "memory" else "layer by layer from disk")
            + ": "
            + ", ".join(f"{k} {gib(v)}" for k, v in self.parts.items())
        )
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "cap_bytes": self.cap,
            "mode": self.mode,
            "estimate_in_memory_bytes": self.in_memory,
            "estimate_streamed_bytes": self.streamed,
            "estimate_parts_bytes": self.parts,
            "folder": self.folder,
        }


def stream_folder(source: Any) -> Path | None:
    """The safetensors folder a streamed run reads: a local model folder, or the dequantized
    cache entry of a GGUF (present once the GGUF was loaded in memory); None otherwise."""
    if source.kind == "local_dir" and source.path and any(Path(source.path).glob("*.safetensors")):
        return Path(source.path)
    if source.kind == "gguf":
        from compress.models import _dequant_entry

        entry = _dequant_entry(source, "float32")
        if entry is not None and (Path(entry.path) / "config.json").is_file():
            return Path(entry.path)
    return None


def _shapes(folder: Path) -> tuple[Any, dict[str, int], int]:
    """(config, {block: float32 bytes}, float32 bytes of the whole model), from a meta
    skeleton (tied weights once)."""
    import torch

    from compress.stream.model import StreamedModel, skeleton

    model = skeleton(folder, torch.float32)
    config = model.config
    blocks = {
        b: sum(p.numel() for p in model.get_submodule(b).parameters()) * 4
        for b in StreamedModel._block_names(model)
    }
    total = sum(p.numel() for p in model.parameters()) * 4  # parameters() counts a tie once
    return config, blocks, total


def _phases(recipe: Any, config: Any, block: int) -> dict[str, dict[str, int]]:
    """Bytes each phase holds besides the process: {phase: {term: bytes}}. `block` is the
    largest block in float32 (evaluation holds it so; calibration in its own dtype)."""
    from compress.methods import needs_calibration

    text = getattr(config, "text_config", None) or config
    hidden = int(text.hidden_size)
    inter = int(getattr(text, "intermediate_size", 4 * hidden))
    vocab = int(text.vocab_size)
    out: dict[str, dict[str, int]] = {}
    stages = [s for v in recipe.variant_list for s in v.stages if needs_calibration(s)]
    if stages:  # stages run one after another: the one that holds most sets the peak
        out["calibration"] = max(
            (_calibration_terms(s, recipe.calibration, block, hidden, inter) for s in stages),
            key=lambda t: sum(t.values()),
        )
    ev = recipe.eval.wikitext2
    if ev is not None:
        seq = ev.seq_len or min(2048, int(getattr(text, "max_position_embeddings", 2048)))
        out["evaluation"] = {
            "block": block,
            "window activations and logits": 3 * seq * inter * 4 + 4 * seq * vocab * 4,
        }
    return out


def _calibration_terms(stage: Any, cal: Any, block: int, hidden: int, inter: int) -> dict:
    """What one calibrated stage holds besides the process, in its own calibration dtype and
    batch: the layer, every sample's layer inputs, and the larger of its working set and the
    next inputs with one chunk's MLP activations."""
    from compress.numerics.hessian import CAST_CHUNK, IN_PLACE_MIN

    c = _calib_bytes(stage)
    batch = min(getattr(stage, "batch_size", 8), cal.samples)
    widest = max(hidden, inter)
    inputs = cal.samples * cal.seq_len * hidden * c  # every sample's layer inputs
    mlp = 3 * batch * cal.seq_len * inter * c  # one chunk's MLP activations
    cast = batch * cal.seq_len * widest * 4  # a chunk's inputs in float32 for H
    if widest >= IN_PLACE_MIN:
        cast = min(cast, CAST_CHUNK * 4)  # cast a few rows at a time (hessian_update)
    work = _method_bytes(stage, hidden, inter, c, mlp + cast)
    return {
        "layer": block * c // 4,
        "layer inputs": inputs,
        "statistics, solve or next inputs": max(work, inputs + mlp),
    }


def _method_bytes(stage: Any, hidden: int, inter: int, c: int, chunk: int) -> int:
    """A calibrated method's working set in one layer besides its inputs: what it collects
    while one chunk of activations (`chunk` bytes) passes, or what its solve holds.

    gptq / sparsegpt: the widest Linear's Hessian (float32) while collecting; then H and its
    inverse factor (gptq: the factor overwrites an H of IN_PLACE_MIN+ columns, one matrix)
    with the group's weights, their uint8 codes, float32 row-chunk copies and the layer's
    groups packed so far; packing goes 1024 rows at a time after H is freed. awq: the Gram
    matrix of every input stream at once (three of the hidden width, one of the MLP width)
    and the searched group's weights with fake-quantized copies.
    structured: per-channel sums while scoring (its layer outputs are counted as the next
    inputs are), then the sliced copies of a layer's Linears beside the layer itself (the
    share of channels and KV groups it keeps; attention counted as four square matrices).
    wanda / smoothquant: per-channel statistics only, and the group's weights quantized."""
    from compress.numerics.gptq import ROW_CHUNK
    from compress.numerics.hessian import IN_PLACE_MIN

    method = stage.method
    group = 2 * inter * hidden  # the widest group: gate+up stacked
    if method in ("gptq", "sparsegpt"):
        temps = 8 * min(ROW_CHUNK, group) * 4  # float32 working copies of one row chunk

        def factored(n: int) -> int:  # H and its factor
            return n * n * 4 * (1 if method == "gptq" and n >= IN_PLACE_MIN else 2)

        collect = max(hidden, inter) ** 2 * 4 + chunk
        # the group's uint8 codes, and the layer's earlier groups already packed (int4 at most
        # a byte per two weights; attention counted as four square matrices)
        packed = (4 * hidden**2 + 3 * inter * hidden) // 2
        solve = packed + max(
            factored(inter) + inter * hidden * (c + 1) + temps,
            factored(hidden) + group * (c + 1) + temps,
        )
        return max(collect, solve)
    if method == "awq":
        return (3 * hidden**2 + inter**2) * 4 + chunk + 3 * group * 4
    if method == "structured":  # the sliced copies: what the stage keeps of each Linear
        kept_attn, kept_mlp = 1 - (stage.heads or 0), 1 - (stage.mlp or 0)
        return max(chunk, int((4 * hidden**2 * kept_attn + 3 * inter * hidden * kept_mlp) * c))
    return chunk + 2 * group * 4


def _calib_bytes(stage: Any) -> int:
    dtype = getattr(stage, "calibration_dtype", None) or getattr(stage, "compute_dtype", None)
    return 4 if dtype in (None, "float32") else 2


def _tokenizer_bytes(folder: Path) -> int:
    """What loading the tokenizer adds to the process (measured: it is loaded for the run
    anyway, and a large vocabulary costs hundreds of MB)."""
    from transformers import AutoTokenizer

    before = _rss()
    tok = AutoTokenizer.from_pretrained(folder)
    after = _rss()
    del tok
    return max(0, after - before)


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def plan(
    recipe: Any, source: Any, *, cap: int | None, quick: bool = False, stream: bool = False
) -> Plan:
    """The run's mode under `cap` (see the module docstring): in memory when it fits, else
    layer by layer (always with `stream`); BadInput when neither fits or streaming cannot run
    this recipe, naming the biggest terms and what to change."""
    folder = stream_folder(source)
    if folder is None:
        raise BadInput(
            f"--max-memory needs the model's weights as safetensors to estimate and stream "
            f"them; '{recipe.model}' is a {source.kind} source without a safetensors folder.",
            fix="Point the recipe at a local safetensors folder (for a GGUF alias, run once "
            "without --max-memory so its dequantized copy is cached).",
        )
    import torch  # noqa: F401 - counted in the baseline RSS below
    import transformers  # noqa: F401

    config, blocks, total = _shapes(folder)
    block = max(blocks.values())
    phases = _phases(recipe, config, block)
    base = _rss() + _tokenizer_bytes(folder)
    n_models = 1 + len(recipe.variant_list)
    work = max((sum(t.values()) - t.get("layer", 0) - t.get("block", 0) for t in phases.values()),
               default=0)  # fmt: skip
    in_memory = base + n_models * total + work
    top = max(phases, key=lambda k: sum(phases[k].values()), default=None)
    streamed = base + (sum(phases[top].values()) if top else block)
    if not stream and (cap is None or in_memory <= cap):
        parts = {"process": base, f"{n_models} models": n_models * total, "working set": work}
        return Plan(cap, "memory", in_memory, streamed, parts, str(folder))
    parts = {"process": base, **{f"{top} {k}": v for k, v in (phases[top] if top else {}).items()}}
    if cap is not None and streamed > cap:
        raise BadInput(
            f"--max-memory {gib(cap)}: the run needs about {gib(streamed)} even layer by layer "
            f"from disk ({', '.join(f'{k} {gib(v)}' for k, v in parts.items())}); in memory "
            f"about {gib(in_memory)}.",
            fix="Raise --max-memory, or shrink the working sets: calibration.samples / "
            "seq_len, eval.wikitext2.seq_len.",
        )
    check_streamable(recipe)
    return Plan(cap, "stream", in_memory, streamed, parts, str(folder))


def check_streamable(recipe: Any) -> None:
    """What a layer-by-layer run supports; BadInput naming the first field it does not."""
    for j, v in enumerate(recipe.variant_list):
        for i, s in enumerate(v.stages):
            if s.method not in STREAMABLE:
                where = f"stages.{i}" if recipe.variants is None else f"variants.{j}.stages.{i}"
                raise BadInput(
                    f"{where}: method '{s.method}' does not run layer by layer from disk yet "
                    f"(streamed methods: {', '.join(STREAMABLE)}); the model does not fit in "
                    "--max-memory otherwise.",
                    fix="Use one of those methods, or raise --max-memory.",
                )
    from compress.metrics import metric_info

    gates = [(f"gates.{i}", g) for i, g in enumerate(recipe.gates)]
    gates += [(f"variants.{j}.gates.{i}", g) for j, v in enumerate(recipe.variants or [])
              for i, g in enumerate(v.gates)]  # fmt: skip
    for path, g in gates:
        if metric_info(g.metric).producer == "profile":
            raise BadInput(
                f"{path}: {g.metric} needs timing, and a model larger than --max-memory is "
                "not timed (timing needs a device that holds the whole model).",
                fix="Drop the gate for this run, or raise --max-memory.",
            )
    if recipe.eval.tasks:
        raise BadInput(
            "eval.tasks: task evaluation is not streamed (each item's forward would read every "
            "layer from disk); a model larger than --max-memory is scored on perplexity only.",
            fix="Remove eval.tasks, or raise --max-memory.",
        )
    if recipe.export:
        raise BadInput(
            "export: exports read the whole saved model into memory; not with a model larger "
            "than --max-memory.",
            fix="Export later with `compress export` on a machine that holds the model.",
        )
