"""A model larger than the memory cap, compressed layer by layer (issue 13's big-model target).

A randomly initialised Llama with 7B layer widths (hidden 4096, intermediate 11008, 32 heads,
4 layers, SmolLM2's 49152-token vocabulary and tokenizer, tied embeddings: 1.01e9 parameters,
4.03 GB in float32) is compressed by GPTQ int4 through `compress apply`, twice, one process
after the other:

  streamed   `--max-memory 2GiB`: the estimate is printed; the model does not fit, so it runs
             layer by layer from disk, saved, reloaded from its folder and scored. If the
             estimate says even that needs more than 2 GiB, the run is refused (exit 2, before
             loading anything) and the benchmark records that and tries 3 GiB
  in memory  no cap (`--max-memory 64GiB`, so the report records its estimate and peak too)

Each run is its own process; its peak RSS is measured from outside (getrusage of the child)
and from inside (the report's run.memory.peak_rss_bytes). Targets, fixed before the run:
the streamed run's peak RSS <= the 2 GiB cap (else: <= the cap it ran under), and both runs
write bit-identical weights and score identical perplexity and KLD (the streamed path
changes where tensors live, not what is computed). The random weights make the quality
figures meaningless as quality; they only need to agree.

    python benchmarks/bigmodel.py                 # both runs (reports/benchmarks/bigmodel/runs)
    python benchmarks/bigmodel.py --only streamed
    python benchmarks/bigmodel.py --only streamed --stages structured-gptq
    python benchmarks/bigmodel.py --only memory --stages structured-gptq --reuse-streamed JSON

`--stages structured-gptq` puts structured pruning first (one of the 4 layers dropped by score,
the first and last protected, and a quarter of the MLP channels in steps of 128, so that GPTQ's
groups of 128 divide what is left), then the same
GPTQ int4: both stages layer by layer from disk under the same cap; its weights gate (<= 0.2x
of float32, from the shapes: 3 layers of int4 with the smaller MLP and the bf16 embedding come
to about 0.17x) was fixed before its first run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MODEL = Path.home() / ".cache" / "compress" / "bench" / "llama-7bwidth-4layer-seed0"
CAPS = ("2GiB", "3GiB")  # the cap first; the next one if the estimate refuses it
WIDTHS = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
              num_key_value_heads=32, num_hidden_layers=4)  # fmt: skip


def build_model(path: Path = MODEL) -> Path:
    """The random model as a safetensors folder (built once, then reused: seed 0)."""
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from compress import models

    tok = models.load("smollm2-135m").tokenizer
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cfg = LlamaConfig(
        vocab_size=len(tok), max_position_embeddings=4096, tie_word_embeddings=True, **ids, **WIDTHS
    )
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = LlamaForCausalLM(cfg).eval()
    tmp = path.with_name(path.name + ".partial")
    model.save_pretrained(tmp, max_shard_size="1GB")
    tok.save_pretrained(tmp)
    tmp.rename(path)
    n = sum(p.numel() for p in model.parameters())
    print(f"built {path}: {n / 1e9:.2f}e9 parameters in {time.perf_counter() - t0:.0f} s")
    return path


GPTQ = {"method": "gptq", "bits": 4, "group_size": 128, "targets": ["Linear"],
        "ignore": ["lm_head"]}  # fmt: skip
STRUCTURED = {"method": "structured", "layers": 0.25, "mlp": 0.25, "mlp_multiple": 128,
              "samples": 8, "batch_size": 2}  # fmt: skip


def recipe(model: Path, stages: str = "gptq") -> dict:
    pruned = stages == "structured-gptq"
    return {
        "name": f"llama-7bwidth-{stages}-int4",
        "description": "random Llama, 7B layer widths, 4 layers: "
        + ("structured (1 layer, 25% MLP) then " if pruned else "")
        + "GPTQ int4 g128 layer by layer",
        "model": str(model),
        "stages": [STRUCTURED, GPTQ] if pruned else [GPTQ],
        "calibration": {"dataset": "wikitext2-calib", "samples": 16, "seq_len": 512, "seed": 0},
        "eval": {"wikitext2": {"seq_len": 512, "max_windows": 8}, "kld": {"enabled": True}},
        "profile": {"enabled": False},
        # fixed before the first run of each: int4 layers + bf16 embedding is ~0.21x of
        # float32; with a layer and a quarter of the MLP pruned first ~0.17x
        "gates": [{"metric": "weights.bytes", "max_ratio": 0.2 if pruned else 0.25}],
    }


def run_measured(args: list[str]) -> dict:
    """Run `compress apply ...` in a child process; its wall time and peak RSS (getrusage)."""
    wrapper = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.exit(r.returncode)"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", wrapper, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak = next(int(x.split()[1]) for x in proc.stdout.splitlines() if x.startswith("PEAK_KIB"))
    return {"exit_code": proc.returncode, "wall_s": round(wall, 1), "peak_rss_bytes": peak * 1024,
            "output_tail": (proc.stdout + proc.stderr)[-3000:]}  # fmt: skip


def latest_run(out: Path, name: str, before: set[Path]) -> Path | None:
    runs = sorted(p for p in (out / name).glob("2*") if p not in before)
    return runs[-1] if runs else None


def measure(report: dict, label: str, name: str) -> float | None:
    rec = report["baseline"] if label == "baseline" else report["variants"][0]["record"]
    return next((m["value"] for m in rec["measurements"] if m["name"] == name), None)


def one(out: Path, recipe_path: Path, name: str, cap: str, data_dir: Path) -> dict:
    before = set((out / name).glob("2*")) if (out / name).is_dir() else set()
    cmd = [sys.executable, "-m", "compress", "apply", str(recipe_path), "--out", str(out),
           "--max-memory", cap, "--data-dir", str(data_dir), "--no-progress"]  # fmt: skip
    print("$", " ".join(cmd[2:]), flush=True)
    res = run_measured(cmd)
    run_dir = latest_run(out, name, before)
    res.update(cap=cap, run_dir=str(run_dir) if run_dir else None)
    if run_dir is not None and (run_dir / "report.json").is_file():
        rep = json.loads((run_dir / "report.json").read_text())
        res["report_memory"] = rep["run"].get("memory")
        res["figures"] = {
            f"{label}.{m}": measure(rep, label, m)
            for label in ("baseline", "variant")
            for m in ("weights.bytes", "wikitext2.perplexity")
        } | {"variant.kld.mean": measure(rep, "variant", "kld.mean")}
    gib = res["peak_rss_bytes"] / 2**30
    print(f"  exit {res['exit_code']}, {res['wall_s'] / 60:.1f} min, peak RSS {gib:.2f} GiB")
    return res


def same_weights(a: Path, b: Path) -> bool:
    import torch

    from compress.quant.serialize import read_tensors

    ta, tb = read_tensors(a / "model"), read_tensors(b / "model")
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", type=Path, default=REPO / "reports" / "benchmarks" / "bigmodel" / "runs"
    )
    ap.add_argument("--only", choices=("streamed", "memory"), default=None)
    ap.add_argument("--stages", choices=("gptq", "structured-gptq"), default="gptq")
    ap.add_argument(
        "--reuse-memory",
        type=Path,
        default=None,
        help="an earlier bigmodel JSON whose in-memory run to compare with (not run again)",
    )
    ap.add_argument(
        "--reuse-streamed",
        type=Path,
        default=None,
        help="an earlier bigmodel JSON whose streamed run to compare with (not run again)",
    )
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--json", type=Path, default=REPO / "reports" / "benchmarks" / "bigmodel")
    args = ap.parse_args()
    from compress.stream import budget

    model = build_model()
    r = recipe(model, args.stages)
    args.out.mkdir(parents=True, exist_ok=True)
    recipe_path = args.out / f"{r['name']}.yaml"
    recipe_path.write_text(yaml.safe_dump(r, sort_keys=False))
    runs = {}
    if args.reuse_streamed is not None:
        earlier = json.loads(args.reuse_streamed.read_text())
        if earlier["recipe"] != r:
            raise SystemExit(f"{args.reuse_streamed}: made by another recipe")
        runs["streamed"] = dict(earlier["runs"]["streamed"], reused_from=str(args.reuse_streamed))
    elif args.only in (None, "streamed"):
        for cap in CAPS:
            res = one(args.out, recipe_path, r["name"], cap, args.data_dir)
            runs[f"streamed-{cap}"] = res
            if res["exit_code"] != 2:
                runs["streamed"] = res
                break
    if args.reuse_memory is not None:
        earlier = json.loads(args.reuse_memory.read_text())["runs"]["memory"]
        runs["memory"] = dict(earlier, reused_from=str(args.reuse_memory))
    elif args.only in (None, "memory"):
        runs["memory"] = one(args.out, recipe_path, r["name"], "64GiB", args.data_dir)
    result = {"host": _host(), "command": " ".join(sys.argv), "recipe": r, "runs": runs}
    s = runs.get("streamed")
    if s:
        cap = budget.parse_size(s["cap"])
        result["target_2GiB_met"] = s["cap"] == "2GiB" and s["peak_rss_bytes"] <= 2**31
        result["target_peak_within_its_cap"] = s["exit_code"] == 0 and s["peak_rss_bytes"] <= cap
    if s and runs.get("memory") and s.get("run_dir") and runs["memory"].get("run_dir"):
        m = runs["memory"]
        result["identical_figures"] = s.get("figures") == m.get("figures")
        result["identical_weights"] = same_weights(Path(s["run_dir"]), Path(m["run_dir"]))
    for k, v in result.items():
        if k.startswith(("target", "identical")):
            print(f"{k}: {v}")
    args.json.mkdir(parents=True, exist_ok=True)
    dest = args.json / f"bigmodel-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    dest.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {dest}")
    return 0


def _host() -> dict:
    import platform

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    return {"cpu": cpu, "machine": platform.machine(), "python": platform.python_version(),
            "ram_bytes": _ram()}  # fmt: skip


def _ram() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


if __name__ == "__main__":
    sys.exit(main())
