"""Peer run: llm-compressor's GPTQModifier on the same model, samples, bits and group size.

Runs inside its own virtual environment (llm-compressor pins transformers<=5.17, which cannot
sit beside this project's), created once with:

    python -m venv benchmarks/.peer-venv
    benchmarks/.peer-venv/bin/pip install torch==2.13.0
    benchmarks/.peer-venv/bin/pip install llmcompressor==0.14.0.1 gguf accelerate
    benchmarks/.peer-venv/bin/pip install --no-deps -e .

Called by benchmarks/quant_methods.py --peer with the exact calibration token ids and eval
windows it used; prints one JSON line: perplexity on those windows and the oneshot wall time.
Perplexity is computed with this project's evaluator (same definition, same windows).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from safetensors.torch import load_file


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--gguf", default="")
    ap.add_argument("--ids", required=True, help="safetensors with 'calib' and 'windows'")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--actorder", default="static", choices=["static", "none"])
    ap.add_argument(
        "--symmetric",
        default="false",
        choices=["true", "false"],
        help="false matches the shipped gptq recipes (asymmetric grid)",
    )
    args = ap.parse_args()

    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compress.evaluate.perplexity import evaluate_many

    kw = {"gguf_file": args.gguf} if args.gguf else {}
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32, **kw)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir, **kw)  # oneshot wants a processor
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if args.gguf:  # oneshot re-reads the config from the model's path: give it a HF folder
        folder = tempfile.mkdtemp(prefix="peer-gptq-")
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = load_file(args.ids)
    calib, windows = ids["calib"], ids["windows"]
    ds = Dataset.from_dict(
        {"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()}
    )
    scheme = QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(
            num_bits=args.bits,
            type="int",
            symmetric=args.symmetric == "true",
            strategy="group",
            group_size=args.group,
        ),
    )
    recipe = GPTQModifier(
        config_groups={"group_0": scheme},
        ignore=["lm_head"],
        dampening_frac=0.01,
        block_size=128,
        actorder=None if args.actorder == "none" else args.actorder,
    )
    t0 = time.perf_counter()
    oneshot(
        model=model,
        dataset=ds,
        recipe=recipe,
        processor=tokenizer,
        num_calibration_samples=len(calib),
        max_seq_length=calib.shape[1],
        shuffle_calibration_samples=False,
    )
    wall = time.perf_counter() - t0
    model.eval()
    q = evaluate_many(model, {}, windows, progress=False)
    ppl = float(torch.tensor(q["baseline_per_window"]).mean().exp())
    print(
        json.dumps(
            {
                "peer": "llmcompressor 0.14.0.1 GPTQModifier",
                "bits": args.bits,
                "group": args.group,
                "actorder": args.actorder,
                "symmetric": args.symmetric == "true",
                "samples": len(calib),
                "ppl": ppl,
                "apply_s": wall,
            }
        )
    )


if __name__ == "__main__":
    main()
