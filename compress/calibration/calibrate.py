"""The one layer-by-layer calibration loop that GPTQ, AWQ, SmoothQuant, Wanda and
SparseGPT share (per-group statistics inside a layer: calibration/layerwise.py).

    batches --embed--> inputs of decoder layer 0
    for each decoder layer:
        on_layer(ctx)          the method observes the layer on its real inputs (hooks) and
                               rewrites its weights
        inputs = layer(inputs) recomputed WITH the rewritten weights, so the next layer sees
                               what the compressed model will really feed it (sequential)

Only one layer's activations are alive at a time (samples x seq_len x hidden), so peak
memory is about one layer plus activations on top of the model itself.
Per-layer keyword arguments (masks, rotary embeddings) are captured once for every layer,
since architectures such as Gemma 3 give sliding and full layers different ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from compress.errors import BadInput, StageFailed

if TYPE_CHECKING:
    from compress.recipe import Calibration

log = logging.getLogger(__name__)

CALIB_LOCAL = {"wikitext2-calib": "calibration/wikitext-2-v1/valid.txt"}
CALIB_HUB = {"wikitext2-calib": ("wikitext", "wikitext-2-raw-v1", "train")}


@dataclass
class CalibrationData:
    input_ids: torch.Tensor  # [samples, seq_len]
    provenance: dict[str, Any] = field(default_factory=dict)


def _calibration_text(dataset: str, data_dir: str | Path | None) -> tuple[str, str]:
    from compress.data import candidate_dirs

    path = Path(dataset).expanduser()
    if path.suffix in (".txt", ".raw", ".jsonl") or path.is_file():
        if not path.is_file():
            raise BadInput(f"calibration.dataset: file '{path}' does not exist.")
        if path.suffix == ".jsonl":
            import json

            with path.open(encoding="utf-8") as f:
                return "\n\n".join(json.loads(line)["text"] for line in f if line.strip()), str(
                    path
                )
        return path.read_text(encoding="utf-8"), str(path.resolve())
    tried = []
    if dataset in CALIB_LOCAL:
        for d in candidate_dirs(data_dir):
            p = d / CALIB_LOCAL[dataset]
            tried.append(str(p))
            if p.is_file():
                return p.read_text(encoding="utf-8"), str(p.resolve())
    hub = CALIB_HUB.get(dataset, (dataset, None, "train"))
    try:
        from datasets import load_dataset

        ds = (
            load_dataset(hub[0], hub[1], split=hub[2])
            if hub[1]
            else load_dataset(hub[0], split=hub[2])
        )
        return "\n\n".join(ds["text"]), "/".join(x for x in hub if x)
    except Exception as e:
        where = f"local copies at {', '.join(tried)}; then " if tried else ""
        raise BadInput(
            f"calibration.dataset '{dataset}' not found: looked for {where}the hub dataset "
            f"'{hub[0]}' and got {type(e).__name__}: {_first_line(e)}.",
            fix="Use wikitext2-calib with --data-dir/COMPRESS_DATA_DIR, a local .txt/.jsonl "
            "file, or go online.",
        ) from None


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0][:160] if str(e) else ""


def load_calibration(
    tokenizer: Any, cfg: Calibration, data_dir: str | Path | None = None
) -> CalibrationData:
    """Tokenize the calibration text once and cut `samples` random windows (seeded)."""
    text, location = _calibration_text(cfg.dataset, data_dir)
    ids = torch.tensor(tokenizer(text, return_attention_mask=False)["input_ids"], dtype=torch.long)
    if ids.numel() <= cfg.seq_len:
        raise BadInput(f"calibration text has {ids.numel()} tokens; seq_len is {cfg.seq_len}.")
    gen = torch.Generator().manual_seed(cfg.seed)
    starts = torch.randint(0, ids.numel() - cfg.seq_len, (cfg.samples,), generator=gen)
    batch = torch.stack([ids[s : s + cfg.seq_len] for s in starts.tolist()])
    return CalibrationData(
        batch,
        {
            "name": "calibration",
            "dataset": cfg.dataset,
            "location": location,
            "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "token_ids_sha256": hashlib.sha256(batch.numpy().tobytes()).hexdigest(),
            "samples": cfg.samples,
            "seq_len": cfg.seq_len,
            "seed": cfg.seed,
        },
    )


def require_calibration(
    calibration: CalibrationData | None, stage: str, why: str
) -> CalibrationData:
    """`calibration`, or a StageFailed naming the stage and the recipe block that is missing
    (called before a stage changes anything)."""
    from compress.errors import BadInput

    if calibration is None:
        raise BadInput(
            f"{stage} needs calibration data ({why}) and got none.",
            fix="Add a calibration block to the recipe, e.g. calibration: {dataset: "
            "wikitext2-calib, samples: 128, seq_len: 512}.",
        )
    return calibration


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder's layer list and its module name (`model.layers` for Llama/Gemma/Qwen...)."""
    for name in (
        "model.layers",
        "model.decoder.layers",
        "transformer.h",
        "gpt_neox.layers",
        "model.language_model.layers",
    ):
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(mod, nn.ModuleList):
            return name, mod
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise BadInput("calibration: this model has no list of decoder layers to walk.")
    return max(lists, key=lambda nm: len(nm[1]))


class StopForward(Exception):
    """Raised from a hook to end a forward once what it needs has been seen."""


def _device_of(model: nn.Module) -> torch.device:
    dev = next(model.parameters()).device
    return torch.device("cpu") if dev.type == "meta" else dev  # streamed: blocks load on CPU


@torch.no_grad()
def capture(model: nn.Module, chunks: list[torch.Tensor]) -> tuple[list[torch.Tensor], Any]:
    """Inputs of decoder layer 0 for each chunk, and every layer's keyword arguments."""
    _, layers = decoder_layers(model)
    dev = _device_of(model)
    layer_kwargs: list[dict[str, Any] | None] = [None] * len(layers)

    def keep_kwargs(i):
        def hook(_m, _args, kwargs):
            kw = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "use_cache")}
            layer_kwargs[i] = kw

        return hook

    handles = [
        layer.register_forward_pre_hook(keep_kwargs(i), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    try:
        model(chunks[0][:1].to(dev), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    inputs: list[torch.Tensor] = []

    def grab(_m, args, kwargs):
        inputs.append(args[0] if args else kwargs["hidden_states"])
        raise StopForward

    # first: a model streamed from disk (compress.stream) does not load layer 0 just to stop
    h = layers[0].register_forward_pre_hook(grab, with_kwargs=True, prepend=True)
    try:
        for c in chunks:
            with contextlib.suppress(StopForward):
                model(c.to(dev), use_cache=False)
    finally:
        h.remove()
    return inputs, layer_kwargs


def forward_layer(layer: nn.Module, x: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    out = layer(x, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@dataclass
class LayerContext:
    """What a method sees for one decoder layer."""

    index: int
    name: str  # e.g. "model.layers.3"
    layer: nn.Module
    inputs: list[torch.Tensor]  # one tensor per chunk: [chunk, seq_len, hidden]
    kwargs: dict[str, Any]

    @torch.no_grad()
    def run(
        self,
        hooks: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], None]] | None = None,
    ) -> list[torch.Tensor]:
        """Run the layer over every chunk; `hooks[sub_name](module, input, output)` observes the
        named submodules (names relative to the layer, e.g. "self_attn.q_proj")."""
        handles = []
        for sub, fn in (hooks or {}).items():
            mod = self.layer.get_submodule(sub)
            handles.append(mod.register_forward_hook(lambda m, inp, out, fn=fn: fn(m, inp[0], out)))
        try:
            return [forward_layer(self.layer, x, self.kwargs) for x in self.inputs]
        finally:
            for h in handles:
                h.remove()


def _peak_mem(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(dev) / 2**20:.0f} MiB cuda"
    import psutil

    return f"{psutil.Process().memory_info().rss / 2**20:.0f} MiB rss"


def sequential(
    model: nn.Module,
    calib: CalibrationData,
    on_layer: Callable[[LayerContext], dict[str, Any] | None],
    *,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "calibrate",
    after_layer: Callable[[LayerContext], None] | None = None,
    writes: bool = True,
) -> list[dict]:
    """Walk the decoder layer by layer (see module docstring). Returns on_layer's records.
    `after_layer(ctx)` runs once the layer's outputs are computed (e.g. to swap in packed
    modules). A model streamed from disk (compress.stream) has each layer loaded before
    on_layer and written to its scratch shard after after_layer, or only emptied when the
    walk does not write (`writes=False`: it scores and changes nothing)."""
    from compress.progress import tqdm
    from compress.stream import model as streamed

    prefix, layers = decoder_layers(model)
    chunks = list(calib.input_ids.split(batch_size))
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    inputs, kwargs = capture(model, chunks)
    records = []
    # TQDM_DISABLE=1 (what the CLI's --no-progress sets) silences this bar too; read here, at
    # call time (tqdm reads it once at import)
    off = not progress or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
    bar = tqdm(list(enumerate(layers)), desc=desc, unit="layer", disable=off)
    stream = streamed.of(model)
    dev = _device_of(model) if stream is None else torch.device("cpu")
    for i, layer in bar:
        name = f"{prefix}.{i}"
        if stream is not None:
            layer = stream.hold(name)
        ctx = LayerContext(i, name, layer, inputs, kwargs[i] or {})
        records.append(on_layer(ctx) or {})
        with torch.no_grad():
            inputs = [forward_layer(layer, x, ctx.kwargs) for x in inputs]
        if not all(torch.isfinite(x).all() for x in inputs):
            raise StageFailed(f"{desc}: non-finite activations after layer '{ctx.name}'.")
        if after_layer is not None:
            after_layer(ctx)
        if stream is not None:
            keep = writes and stream.scratch is not None
            stream.commit(name) if keep else stream.release(name)
        bar.set_postfix_str(f"{time.perf_counter() - t0:.0f}s, peak {_peak_mem(dev)}")
    model.train(was_training)
    log.info("%s: %d layers in %.1f s", desc, len(layers), time.perf_counter() - t0)
    return records
