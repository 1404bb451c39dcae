"""Quantization methods side by side on one model, same calibration, same windows.

For each method: time to apply, peak memory while applying, weight-bytes ratio, decode and
prefill ratios vs the fp32 baseline (each model profiled in a fresh process, in the runtime
that executes it), perplexity delta (paired interval) and KLD - all from one run.

    python benchmarks/quant_methods.py                       # SmolLM2, group 64 + per-channel
    python benchmarks/quant_methods.py --model gemma3-270m --group 128 --only rtn,gptq
    python benchmarks/quant_methods.py --peer                # + llm-compressor GPTQ side by side
    python benchmarks/quant_methods.py --family prune        # magnitude / Wanda / SparseGPT

Defaults follow the issue: >= 40 WikiText-2 windows of 2048, 128 x 512 calibration samples.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEER_PY = REPO / "benchmarks" / ".peer-venv" / "bin" / "python"


def variants(g: int) -> dict[str, list[dict]]:
    """label -> stages. lm_head stays float in every variant, so methods compare like for like.
    GPTQ runs as the shipped recipes do (asymmetric, act_order with static groups)."""
    gptq = {"method": "gptq", "symmetric": False, "act_order": True}
    return {
        f"rtn-w4g{g}-sym": [{"method": "rtn", "bits": 4, "group_size": g}],
        f"rtn-w4g{g}-asym": [{"method": "rtn", "bits": 4, "group_size": g, "symmetric": False}],
        f"gptq-w4g{g}": [{**gptq, "bits": 4, "group_size": g}],
        "rtn-w4-perchannel": [{"method": "rtn", "bits": 4, "group_size": None, "symmetric": False}],
        "gptq-w4-perchannel": [{**gptq, "bits": 4, "group_size": None}],
        f"rtn-w3g{g}": [{"method": "rtn", "bits": 3, "group_size": g, "symmetric": False}],
        f"gptq-w3g{g}": [{**gptq, "bits": 3, "group_size": g}],
        f"awq-w4g{g}": [{"method": "awq", "bits": 4, "group_size": g}],
        "w8a8-dynamic": [{"method": "dynamic_int8"}],
        "smoothquant-w8a8": [{"method": "smoothquant", "alpha": 0.5}],
        "bnb-nf4": [{"method": "bnb", "quant_type": "nf4"}],
        "bnb-int8": [{"method": "bnb", "quant_type": "int8"}],
        "onnx-int8-dynamic": [{"method": "onnx_int8", "kernel": "dynamic"}],
        "onnx-int8-nbits": [{"method": "onnx_int8", "kernel": "matmul_nbits"}],
    }


def prune_variants(g: int) -> dict[str, list[dict]]:
    """Pruning at 50%, unstructured and 2:4, then composed with GPTQ int4 (zeros kept)."""
    gptq = {"method": "gptq", "bits": 4, "group_size": g, "act_order": True}
    return {
        "magnitude-50": [{"method": "magnitude", "sparsity": 0.5}],
        "wanda-50": [{"method": "wanda", "sparsity": 0.5}],
        "sparsegpt-50": [{"method": "sparsegpt", "sparsity": 0.5}],
        "magnitude-2:4": [{"method": "magnitude", "mask_structure": "2:4"}],
        "wanda-2:4": [{"method": "wanda", "mask_structure": "2:4"}],
        "sparsegpt-2:4": [{"method": "sparsegpt", "mask_structure": "2:4"}],
        f"gptq-w4g{g}-sym": [gptq],
        f"sparsegpt-50+gptq-w4g{g}-sym": [
            {"method": "sparsegpt", "sparsity": 0.5},
            {**gptq, "preserve_zeros": True},
        ],
    }


def stage_configs(stages: list[dict]):
    from pydantic import TypeAdapter

    from compress.methods import StageConfig

    return [TypeAdapter(StageConfig).validate_python(s) for s in stages]


def apply_variant(base, stages, calib):
    """Deep-copy the baseline and run the stages; returns (handle, seconds, peak RSS delta)."""
    from compress.handle import ModelHandle
    from compress.methods import run_stage
    from compress.profile.memory import RssSampler, current_rss

    h = ModelHandle(
        model=copy.deepcopy(base.model),
        tokenizer=base.tokenizer,
        source=base.source,
        dtype=base.dtype,
        device=base.device,
    )
    gc.collect()
    before = current_rss()
    t0 = time.perf_counter()
    with RssSampler() as rss:
        for cfg in stage_configs(stages):
            rec = run_stage(h, cfg, calib)
            h.stages.append(
                rec.model_copy(update={"config": cfg.model_dump(mode="json")}).model_dump(
                    mode="json"
                )
            )
    return h, time.perf_counter() - t0, max(rss.peak - before, 0)


def profile(spec: str, dtype: str, prof_cfg) -> dict:
    from compress.profile import profile_in_subprocess

    out = profile_in_subprocess(spec, prof_cfg, quick=False, dtype=dtype, device="cpu")
    return {m["name"]: m for m in out["measurements"]}


def ratio(a: dict, b: dict, name: str) -> str:
    x, y = a.get(name, {}).get("value"), b.get(name, {}).get("value")
    return "n/a" if not x or not y else f"{y / x:.2f}x"


def run_peer(calib_ids, windows, bits: int, group: int, model_dir: Path, gguf: str) -> dict:
    """llm-compressor's GPTQModifier on the same model, samples, bits and group size."""
    if not PEER_PY.exists():
        return {"error": f"no peer environment at {PEER_PY} (see benchmarks/peer_gptq.py)"}
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        save_file({"calib": calib_ids, "windows": windows}, f"{tmp}/ids.safetensors")
        proc = subprocess.run(
            [
                str(PEER_PY),
                str(REPO / "benchmarks" / "peer_gptq.py"),
                "--model-dir",
                str(model_dir),
                "--gguf",
                gguf,
                "--ids",
                f"{tmp}/ids.safetensors",
                "--bits",
                str(bits),
                "--group",
                str(group),
            ],
            capture_output=True,
            text=True,
            timeout=3600,
        )
    if proc.returncode:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--calib-len", type=int, default=512)
    ap.add_argument(
        "--family", choices=["quant", "prune"], default="quant", help="which table of variants"
    )
    ap.add_argument("--only", default="", help="comma-separated label prefixes (e.g. rtn,gptq)")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--peer", action="store_true", help="also run llm-compressor's GPTQ")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    from compress import models
    from compress.calibration.calibrate import load_calibration
    from compress.data import token_windows, wikitext2_test
    from compress.evaluate.perplexity import evaluate_many
    from compress.profile.memory import weight_bytes
    from compress.quant.serialize import save_compressed
    from compress.recipe import Calibration, ProfileConfig

    torch.manual_seed(0)
    base = models.load(args.model, dtype="float32")
    text = wikitext2_test(args.data_dir)
    windows, _, ids_sha = token_windows(base.tokenizer, text.text, 2048, args.windows)
    calib = load_calibration(
        base.tokenizer,
        Calibration(samples=args.calib_samples, seq_len=args.calib_len),
        args.data_dir,
    )
    table = (variants if args.family == "quant" else prune_variants)(args.group)
    if args.only:
        keep = tuple(args.only.split(","))
        table = {k: v for k, v in table.items() if k.startswith(keep)}
    prof_cfg = ProfileConfig(prompt_tokens=128, new_tokens=32, repeats=5)
    results: dict[str, dict] = {}
    handles = {}
    base_bytes = weight_bytes(base.model)
    with tempfile.TemporaryDirectory(prefix="compress-qm-") as tmp:
        for label, stages in table.items():
            print(f"--- {label}: applying", flush=True)
            try:
                h, secs, peak = apply_variant(base, stages, calib)
            except Exception as e:  # a method that cannot run here is reported, not hidden
                results[label] = {"error": f"{type(e).__name__}: {e}"}
                print(f"    failed: {results[label]['error']}", flush=True)
                continue
            saved = save_compressed(h, Path(tmp) / label)
            results[label] = {
                "apply_s": secs,
                "apply_peak_rss_delta_mib": peak / 2**20,
                "weights_ratio": weight_bytes(h.model) / base_bytes,
                "runtime": h.runtime,
                "dtype": h.dtype,
                "dir": str(saved),
                "notes": [n for s in h.stages for n in s.get("notes", [])],
            }
            handles[label] = h.model
        print(
            f"--- scoring {len(handles)} variants + baseline on {args.windows} windows", flush=True
        )
        quality = evaluate_many(base.model, handles, windows)
        base_prof = {} if args.no_profile else profile(args.model, "float32", prof_cfg)
        base_ppl = math.exp(sum(quality["baseline_per_window"]) / args.windows)
        for label, q in quality["variants"].items():
            m = {x["name"]: x for x in q["measurements"]}
            diffs = [
                c - b
                for b, c in zip(
                    quality["baseline_per_window"], q["per_window"]["nll_comp"], strict=True
                )
            ]
            results[label].update(
                ppl=m["wikitext2.perplexity"]["value"],
                kld=m["kld.mean"]["value"],
                top1=m["kld.top1_agreement"]["value"],
                nll_diff=sum(diffs) / len(diffs),
            )
        del handles
        gc.collect()
        if not args.no_profile:
            for label, r in results.items():
                if "error" in r:
                    continue
                print(f"--- profiling {label} ({r['runtime']})", flush=True)
                p = profile(r["dir"], r["dtype"], prof_cfg)
                r["decode_ratio"] = ratio(base_prof, p, "decode.tokens_per_s")
                r["prefill_ratio"] = ratio(base_prof, p, "prefill.tokens_per_s")
                r["decode_tok_s"] = p.get("decode.tokens_per_s", {}).get("value")

    peer = None
    if args.peer:
        src = base.source
        peer = run_peer(calib.input_ids, windows, 4, args.group, src.path, src.gguf_file or "")
        ours = results.get(f"gptq-w4g{args.group}", {})
        peer["ours_ppl"], peer["ours_apply_s"] = ours.get("ppl"), ours.get("apply_s")

    print(
        f"\n{args.model}: baseline ppl {base_ppl:.3f} on {args.windows} windows x 2048 "
        f"(token ids sha256 {ids_sha[:12]}), fp32 decode "
        f"{base_prof.get('decode.tokens_per_s', {}).get('value', float('nan')):.1f} tok/s; "
        f"calibration {args.calib_samples} x {args.calib_len}"
    )
    cols = (
        "method",
        "apply s",
        "apply peak MiB",
        "weights x",
        "decode x",
        "prefill x",
        "ppl",
        "ppl +%",
        "KLD",
        "runtime",
    )
    print(" | ".join(cols))
    for label, r in results.items():
        if "error" in r:
            print(f"{label} | FAILED: {r['error'][:160]}")
            continue
        inc = 100 * (r["ppl"] / base_ppl - 1)
        print(
            " | ".join(
                [
                    label,
                    f"{r['apply_s']:.1f}",
                    f"{r['apply_peak_rss_delta_mib']:.0f}",
                    f"{r['weights_ratio']:.3f}",
                    r.get("decode_ratio", "-"),
                    r.get("prefill_ratio", "-"),
                    f"{r['ppl']:.3f}",
                    f"{inc:+.2f}",
                    f"{r['kld']:.4f}",
                    f"{r['runtime']} {r['dtype']}",
                ]
            )
        )
    g = args.group

    def inc(label):
        r = results.get(label, {})
        return r["ppl"] - base_ppl if "ppl" in r else None

    checks = [
        (f"gptq-w4g{g}", f"rtn-w4g{g}-asym", 0.6),
        ("gptq-w4-perchannel", "rtn-w4-perchannel", 0.6),
        (f"gptq-w3g{g}", f"rtn-w3g{g}", 0.6),
        (f"awq-w4g{g}", f"rtn-w4g{g}-asym", 0.8),
        ("smoothquant-w8a8", "w8a8-dynamic", 0.5),
    ]
    if args.family == "prune":  # no filed targets yet: calibrated pruning vs magnitude
        checks = [
            (f"{m}-{s}", f"magnitude-{s}", 1.0)
            for s in ("50", "2:4")
            for m in ("wanda", "sparsegpt")
        ]
    print("\nquality targets (ppl increase over baseline, method vs its plain counterpart):")
    for a, b, bound in checks:
        ia, ib = inc(a), inc(b)
        if ia is None or ib is None:
            continue
        rel = ia / ib if ib > 0 else float("inf")
        print(
            f"  {a}: +{ia:.3f} vs {b}: +{ib:.3f} -> {rel:.2f}x (target <= {bound}x) "
            f"{'MET' if rel <= bound else 'MISSED'}"
        )
    if peer:
        print(f"\npeer (llm-compressor GPTQModifier, same bits/group/samples): {peer}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"baseline_ppl": base_ppl, "results": results, "peer": peer}, indent=2, default=str
            )
        )


if __name__ == "__main__":
    main()
