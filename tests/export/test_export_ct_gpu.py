"""The compressed-tensors export loaded by vLLM on CUDA: the greedy tokens vLLM generates are
the ones our own model generates. Marked `gpu` (skipped without a CUDA device, conftest) and
skipped without vLLM; vLLM's int4 kernels want layer widths of 64 or more, so the tiny model
here is a wider one than the unit tests use."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from compress.export.ct import write_compressed_tensors
from compress.methods import rtn, run_stage
from compress.testing import tiny_handle

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]
WIDE = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4}


def test_vllm_generates_our_greedy_tokens(tmp_path):
    from vllm import LLM, SamplingParams

    h = tiny_handle(**WIDE)
    h.stages.append(run_stage(h, rtn.RTNConfig(bits=4, group_size=64)).model_dump(mode="json"))
    write_compressed_tensors(h, tmp_path / "ct")
    prompt = [1, 40, 41, 50, 60, 70, 5, 6]
    with torch.no_grad():
        ours = h.model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)
    llm = LLM(str(tmp_path / "ct"), skip_tokenizer_init=True, dtype="float16", enforce_eager=True)
    out = llm.generate(
        [{"prompt_token_ids": prompt}], SamplingParams(max_tokens=8, temperature=0.0)
    )
    assert list(out[0].outputs[0].token_ids) == ours[0, len(prompt) :].tolist()
