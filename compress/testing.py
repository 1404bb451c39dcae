"""Offline fixtures: tiny randomly initialised models and a character tokenizer, built in code.

Used by the unit tests (no downloads; set HF_HUB_OFFLINE=1) and handy for trying a recipe
without the real model: `save_tiny_llama(path)` writes a local HF directory a recipe can name.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from compress.handle import ModelHandle, ModelSource

TEXT = (
    " = Tiny corpus = \n\n The quick brown fox jumps over the lazy dog . It was 1999 and the "
    "weather was fine ; a model with 2 layers learns little , but it runs fast .\n"
)


def tiny_tokenizer() -> Any:
    """A character-level fast tokenizer (printable ASCII + specials), no files needed."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )


def tiny_llama_config(**overrides: Any) -> Any:
    from transformers import LlamaConfig

    cfg = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def tiny_llama(seed: int = 0, **overrides: Any) -> Any:
    """A 2-layer Llama (hidden 64, vocab 128, tied embeddings), random weights, fp32, eval."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(**overrides)).eval()
    return model


def tiny_handle(seed: int = 0, **overrides) -> ModelHandle:
    model = tiny_llama(seed, **overrides)
    return ModelHandle(
        model=model,
        tokenizer=tiny_tokenizer(),
        source=ModelSource(spec="tiny-llama", kind="local_dir", note="random tiny Llama (tests)"),
        dtype="float32",
        device="cpu",
    )


def save_tiny_llama(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny Llama + tokenizer as a local HF directory (safetensors)."""
    path = Path(path)
    tiny_llama(seed).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def tiny_text_file(path: str | Path, repeats: int = 40) -> Path:
    """A small WikiText-like file for offline eval tests."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TEXT * repeats, encoding="utf-8")
    return path


def tiny_calibration(samples: int = 16, seq_len: int = 64, seed: int = 1) -> Any:
    """Random token ids as calibration data for the tiny models (ids 4..99, seeded)."""
    import torch

    from compress.calibration.calibrate import CalibrationData

    g = torch.Generator().manual_seed(seed)
    return CalibrationData(torch.randint(4, 100, (samples, seq_len), generator=g))


# -- test oracles (independent of compress.evaluate, which is what they check) -------------


def kl_per_token(ref: Any, other: Any) -> float:
    """Mean per-token KL(ref || other) between two logits tensors [..., vocab]."""
    import torch.nn.functional as F

    lr = F.log_softmax(ref, -1).reshape(-1, ref.shape[-1])
    lo = F.log_softmax(other, -1).reshape(-1, ref.shape[-1])
    return float(F.kl_div(lo, lr, log_target=True, reduction="batchmean"))


def snapshot(model: Any) -> dict:
    """A copy of every tensor in `model.state_dict()`, for `unchanged`."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model: Any, before: dict) -> bool:
    """Whether `model` holds exactly the tensors `snapshot` saw (same names, equal values)."""
    import torch

    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def float32_reference(model):
    """A copy of our model with every int4 Linear a float32 Linear holding its dequantized
    codes, every int8 module on its float32-dequantizing path (embedding rows in float32),
    float parts in float32."""
    import copy

    import torch
    from torch import nn

    from compress.export.gguf_model import int4_grid
    from compress.quant.modules import set_paths

    ref = copy.deepcopy(model)
    for name, m in list(ref.named_modules()):
        kind = getattr(m, "kind", None)
        if kind == "int4_linear":
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(int4_grid(m).dequantize().float())
                if m.bias is not None:
                    lin.bias.copy_(m.bias.float())
            ref.set_submodule(name, lin)
        elif kind is not None and "dequant_float32" in getattr(m, "PATHS", ()):
            set_paths(m, "dequant_float32", "dequant_float32")
        if hasattr(m, "out_dtype"):  # the int8 embedding's rows
            m.out_dtype = torch.float32
    return ref.float().eval()
