"""Which op feeds which linears inside a decoder layer, per architecture family.

AWQ and SmoothQuant rescale the input channels of a group of linears and fold the inverse
into the op producing that input (compress/numerics/smooth.py). That is exact only when the
producer is elementwise-linear per channel: a norm's weight, or a linear's output rows that
reach the consumers through per-channel-linear ops only (v_proj -> attention -> o_proj;
up_proj -> act(gate) * up -> down_proj).

Not fold targets, on purpose:
- Gemma 2/3 `post_attention_layernorm` / `post_feedforward_layernorm` normalise the OUTPUT of
  o_proj / down_proj before the residual add; they feed no linear.
- `q_norm` / `k_norm` (Gemma 3, Qwen 3) normalise each head of q_proj / k_proj's output: an
  RMS norm is not invariant to per-channel scaling, so q/k rows cannot absorb a scale, and
  they feed no linear themselves.
- v_proj -> o_proj when v_proj's out_features != o_proj's in_features (grouped-query
  attention repeats each kv head: SmolLM2 has 192 vs 576): o_proj is then only quantized.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from compress.errors import BadInput


@dataclass(frozen=True)
class ScaleGroup:
    prev: str  # producer, relative to the decoder layer ("input_layernorm", "mlp.up_proj")
    linears: tuple[str, ...]  # consumers reading exactly prev's output


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # config.model_type values
    layer_classes: tuple[str, ...]  # decoder layer class names (fallback detection)
    groups: tuple[ScaleGroup, ...]
    norm_offset: float = 0.0  # 1.0: the norm multiplies by (1 + weight) (Gemma)
    no_clip: tuple[str, ...] = ()  # AWQ leaves these unclipped (attention logits: q, k)
    notes: tuple[str, ...] = ()


_ATTN_IN = ScaleGroup(
    "input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
)
_ATTN_OUT = ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",))
_MLP_DOWN = ScaleGroup("mlp.up_proj", ("mlp.down_proj",))
_QK = ("self_attn.q_proj", "self_attn.k_proj")

LLAMA_GROUPS = (
    _ATTN_IN,
    _ATTN_OUT,
    ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    _MLP_DOWN,
)
GEMMA2_GROUPS = (
    _ATTN_IN,
    _ATTN_OUT,
    ScaleGroup("pre_feedforward_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    _MLP_DOWN,
)
_GEMMA_NOTE = "norms multiply by (1 + weight): scales folded as (1 + w') = (1 + w) / s"
_QKNORM_NOTE = "q_norm/k_norm normalise per head after q/k_proj: not fold targets"

FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama",), ("LlamaDecoderLayer",), LLAMA_GROUPS, no_clip=_QK),
    Family("mistral", ("mistral",), ("MistralDecoderLayer",), LLAMA_GROUPS, no_clip=_QK),
    Family("qwen2", ("qwen2",), ("Qwen2DecoderLayer",), LLAMA_GROUPS, no_clip=_QK),
    Family(
        "qwen3",
        ("qwen3",),
        ("Qwen3DecoderLayer",),
        LLAMA_GROUPS,
        no_clip=_QK,
        notes=(_QKNORM_NOTE,),
    ),
    Family(
        "gemma",
        ("gemma",),
        ("GemmaDecoderLayer",),
        LLAMA_GROUPS,
        norm_offset=1.0,
        no_clip=_QK,
        notes=(_GEMMA_NOTE,),
    ),
    Family(
        "gemma2",
        ("gemma2",),
        ("Gemma2DecoderLayer",),
        GEMMA2_GROUPS,
        norm_offset=1.0,
        no_clip=_QK,
        notes=(_GEMMA_NOTE, "post_attention/post_feedforward norms act on outputs: not folded"),
    ),
    Family(
        "gemma3",
        ("gemma3", "gemma3_text"),
        ("Gemma3DecoderLayer",),
        GEMMA2_GROUPS,
        norm_offset=1.0,
        no_clip=_QK,
        notes=(
            _GEMMA_NOTE,
            "post_attention/post_feedforward norms act on outputs: not folded",
            _QKNORM_NOTE,
        ),
    ),
)


def _model_types(model: nn.Module) -> list[str]:
    cfg = getattr(model, "config", None)
    out = [getattr(cfg, "model_type", None)]
    text = getattr(cfg, "text_config", None)
    if text is not None:
        out.append(getattr(text, "model_type", None))
    return [t for t in out if t]


def detect_family(model: nn.Module, layer: nn.Module, *, stage: str) -> Family:
    """The family by config.model_type, else by the decoder layer's class; StageFailed if none."""
    types = _model_types(model)
    for t in types:
        for fam in FAMILIES:
            if t in fam.model_types:
                return fam
    cls = type(layer).__name__
    for fam in FAMILIES:
        if cls in fam.layer_classes:
            return fam
    known = ", ".join(f.name for f in FAMILIES)
    raise BadInput(
        f"{stage}: no scale mapping for architecture '{type(model).__name__}' (model_type "
        f"{'/'.join(types) or '?'}, decoder layer {cls}); known families: {known}.",
        fix="Use a method without activation-aware scaling (rtn, gptq, dynamic_int8), or add "
        "a mapping to compress/calibration/mappings.py.",
    )


@dataclass
class LayerGroup:
    """A ScaleGroup resolved on one decoder layer."""

    prev_name: str
    prev: nn.Module
    kind: str  # "norm" or "linear"
    linears: dict[str, nn.Linear]  # relative name -> module (all of them get the fold)
    targets: list[str] = field(default_factory=list)  # those the stage also quantizes


def _is_norm(m: nn.Module) -> bool:
    name = type(m).__name__
    return isinstance(m, nn.LayerNorm) or "Norm" in name


@torch.no_grad()
def norm_offset_matches(norm: nn.Module, offset: float) -> bool:
    """Probe the norm with a constant input (normalises to ~1): output ~ offset + weight.
    A norm whose weight is on the meta device (a layer of a model streamed from disk, not
    loaded yet) is probed on a copy holding test weights: the check is about its formula."""
    if isinstance(norm, nn.LayerNorm) and norm.bias is not None:
        return False  # a constant input normalises to 0 in a LayerNorm: not probeable
    if norm.weight.device.type == "meta":
        norm = copy.deepcopy(norm).to_empty(device="cpu")
        n = norm.weight.numel()
        norm.weight.copy_(torch.linspace(0.5, 1.5, n, dtype=torch.float32).to(norm.weight.dtype))
    w = norm.weight.detach()
    probe = torch.ones(1, w.numel(), dtype=torch.float32, device=w.device).to(w.dtype)
    out = norm(probe)[0].float()
    want = (offset + w.float()) / (1 + float(getattr(norm, "eps", 0.0) or 0.0)) ** 0.5
    return bool(torch.allclose(out, want, rtol=1e-3, atol=1e-5))


def layer_groups(
    family: Family, layer: nn.Module, layer_name: str, targeted: set[str], *, stage: str
) -> tuple[list[LayerGroup], list[str]]:
    """Resolve the family's groups on `layer`. `targeted` holds the relative names of the
    linears this stage quantizes; groups with none of them are dropped. Returns the groups and
    notes on skipped ones. StageFailed if the layer does not look like the family."""
    groups: list[LayerGroup] = []
    skipped: list[str] = []
    for sg in family.groups:
        try:
            prev = layer.get_submodule(sg.prev)
            lins = {n: layer.get_submodule(n) for n in sg.linears}
        except AttributeError as e:
            raise BadInput(
                f"{stage}: '{layer_name}' lacks a module the {family.name} mapping expects "
                f"({e}); its children are {[n for n, _ in layer.named_children()]}.",
                fix="The architecture differs from the known family: add a mapping.",
            ) from None
        targets = [n for n in sg.linears if n in targeted]
        if not targets:
            continue
        if not all(isinstance(m, nn.Linear) for m in lins.values()):
            kinds = {n: type(m).__name__ for n, m in lins.items()}
            raise BadInput(
                f"{stage}: '{layer_name}' {sg.linears} must all be float nn.Linear layers to be "
                f"rescaled, got {kinds} (already quantized by an earlier stage?).",
                fix="Put this stage before any quantizing stage, or ignore the whole group.",
            )
        ins = {m.in_features for m in lins.values()}
        if isinstance(prev, nn.Linear):
            if ins != {prev.out_features}:
                skipped.append(
                    f"{sg.prev} -> {', '.join(sg.linears)} not scaled: {sg.prev} has "
                    f"out_features {prev.out_features}, {sg.linears[0]} in_features "
                    f"{sorted(ins)[0]} (grouped-query attention repeats kv heads): no scale"
                )
                continue
            kind = "linear"
        elif _is_norm(prev) and getattr(prev, "weight", None) is not None:
            if ins != {prev.weight.numel()}:
                raise BadInput(
                    f"{stage}: '{layer_name}.{sg.prev}' has {prev.weight.numel()} channels but "
                    f"{sg.linears} read {sorted(ins)}."
                )
            if not norm_offset_matches(prev, family.norm_offset):
                raise BadInput(
                    f"{stage}: '{layer_name}.{sg.prev}' ({type(prev).__name__}) does not "
                    f"compute normalised(x) * ({family.norm_offset:g} + weight) as the "
                    f"{family.name} mapping assumes; folding a scale into it would change the "
                    "model.",
                    fix="Add a mapping with the right norm form to "
                    "compress/calibration/mappings.py.",
                )
            kind = "norm"
        else:
            raise BadInput(
                f"{stage}: '{layer_name}.{sg.prev}' is a {type(prev).__name__}, neither a norm "
                "with a weight nor a Linear: cannot fold a scale into it."
            )
        groups.append(LayerGroup(sg.prev, prev, kind, lins, targets))
    return groups, skipped


@dataclass
class Plan:
    """Everything a rescaling stage needs, resolved before it changes anything."""

    family: Family
    prefix: str  # e.g. "model.layers"
    groups: list[list[LayerGroup]]  # per decoder layer
    targets: list[list[str]]  # per decoder layer: targeted linears, relative names
    outside: list[str]  # targeted linears outside the decoder layers (lm_head ...)
    notes: list[str]


def plan(model: nn.Module, chosen: dict[str, nn.Module], *, stage: str) -> Plan:
    """Split the chosen linears by decoder layer and resolve the family's groups on each."""
    from compress.calibration.calibrate import decoder_layers

    prefix, layers = decoder_layers(model)
    family = detect_family(model, layers[0], stage=stage)
    groups, targets, skipped = [], [], {}
    inside: set[str] = set()
    for i, layer in enumerate(layers):
        head = f"{prefix}.{i}."
        rel = [n[len(head) :] for n in chosen if n.startswith(head)]
        inside.update(head + r for r in rel)
        g, sk = layer_groups(family, layer, f"{prefix}.{i}", set(rel), stage=stage)
        groups.append(g)
        targets.append(rel)
        for s in sk:
            skipped.setdefault(s, []).append(i)
    notes = [f"architecture family '{family.name}'", *family.notes]
    notes += [f"{s} (layers {_ranges(ix)})" for s, ix in skipped.items()]
    outside = [n for n in chosen if n not in inside]
    refuse_streamed_outside(model, outside, stage)
    return Plan(family, prefix, groups, targets, outside, notes)


def refuse_streamed_outside(model: nn.Module, outside: list[str], stage: str) -> None:
    from compress.stream.model import of

    if outside and of(model) is not None:
        raise BadInput(
            f"{stage}: targets outside the decoder layers ({', '.join(outside)}) are not "
            "processed layer by layer from disk (the model does not fit in --max-memory).",
            fix="Add them to the stage's ignore: (its default ignores lm_head), or raise "
            "--max-memory.",
        )


def _ranges(ix: list[int]) -> str:
    return (
        f"{ix[0]}-{ix[-1]}"
        if len(ix) > 1 and ix == list(range(ix[0], ix[-1] + 1))
        else (", ".join(map(str, ix)))
    )
