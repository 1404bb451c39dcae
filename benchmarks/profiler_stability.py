"""Is the speed verdict stable? SmolLM2 baseline vs int8 and int4, measured side by side.

Builds the int8 and int4 models of recipes/int8.yaml and recipes/int4.yaml once (RTN, seconds),
chooses their execution paths on this host, then runs the paired interleaved profiler
(`compress.profile.paired`, the protocol `compress apply` uses) as full invocations:

  1. idle, twice: each ratio's two estimates must differ by < 5%, and each 95% interval must be
     narrower than 15% of its ratio;
  2. with one core kept busy by a background process: ratios within 10% of the idle ones.

Prints every ratio with its interval, the targets and PASS/FAIL; the host CPU first. Targets
were fixed in issue 7 before this script was written.

    python benchmarks/profiler_stability.py [--pairs 5] [--metrics decode.tokens_per_s ...]
        [--json out.json] [--skip-busy]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRICS = (
    "decode.tokens_per_s",
    "decode.tokens_per_s@bs8",
    "prefill.tokens_per_s",
    "prefill.tokens_per_s@p512",
)


def build(tmp: Path) -> dict[str, tuple[str, str, dict | None]]:
    """label -> (model folder, dtype, kernel policy) for int8 and int4 as the recipes build them."""
    import copy

    from compress import models
    from compress.methods import run_stage
    from compress.profile.kernels import choose_policy
    from compress.quant.serialize import save_compressed
    from compress.recipe import load_recipe

    base = models.load(models.resolve("smollm2-135m"), dtype="float32", device="cpu")
    out = {}
    for name in ("int8", "int4"):
        recipe = load_recipe(REPO / "recipes" / f"{name}.yaml")
        h = copy.copy(base)
        h.model, h.stages = copy.deepcopy(base.model), []
        for stage in recipe.stages:
            h.stages.append(run_stage(h, stage).model_dump(mode="json"))
        folder = save_compressed(h, tmp / name)
        policy = choose_policy(h.model, prompt_tokens=128, batch_sizes=[1, 8])
        out[name] = (str(folder), h.dtype, policy)
        del h
    return out


def invoke(arms_spec: dict, pairs: int, seed: int) -> dict[str, dict[str, tuple]]:
    """One full paired invocation: {variant: {metric: (ratio, lo, hi)}}."""
    from compress import stats
    from compress.profile.paired import Arm, profile_paired
    from compress.recipe import ProfileConfig

    cfg = ProfileConfig(pairs=pairs)
    arms = [Arm("baseline", "smollm2-135m", "float32")]
    arms += [Arm(k, f, dt, pol) for k, (f, dt, pol) in arms_spec.items()]
    res = profile_paired(arms, cfg, quick=False, device="cpu", seed=seed)
    out: dict[str, dict[str, tuple]] = {}
    for label, paired in res["paired"].items():
        out[label] = {}
        for metric in METRICS:
            p = paired.get(metric)
            if p is None:
                continue
            logs = [math.log(c / b) for b, c in zip(p.base, p.comp, strict=True)]
            m, _, ci = stats.mean_ci(logs)
            out[label][metric] = (math.exp(m), math.exp(ci[0]), math.exp(ci[1]))
    return out


def busy_core() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _fmt(r: tuple) -> str:
    return f"{r[0]:.3f}x [{r[1]:.3f}, {r[2]:.3f}]"


def report(runs: dict[str, dict], busy: dict | None) -> list[dict]:
    rows = []
    a, b = runs["idle 1"], runs["idle 2"]
    for label in a:
        for metric in a[label]:
            r1, r2 = a[label][metric], b[label][metric]
            diff = abs(r1[0] / r2[0] - 1)
            widths = [(r[2] - r[1]) / r[0] for r in (r1, r2)]
            row = {
                "variant": label,
                "metric": metric,
                "idle_1": r1,
                "idle_2": r2,
                "idle_rel_diff": diff,
                "ci_width_rel": widths,
                "pass_repeat": diff < 0.05,
                "pass_width": max(widths) < 0.15,
            }
            if busy is not None:
                rb = busy[label][metric]
                idle = math.sqrt(r1[0] * r2[0])
                row.update(busy=rb, busy_rel_diff=abs(rb[0] / idle - 1))
                row["pass_busy"] = row["busy_rel_diff"] < 0.10
            rows.append(row)
    print("\nvariant  metric                      idle run 1              idle run 2"
          "              diff   CI width  busy one core           diff")  # fmt: skip
    for r in rows:
        busy_s = (
            f"{_fmt(r['busy'])}  {100 * r['busy_rel_diff']:4.1f}% "
            f"{'PASS' if r['pass_busy'] else 'FAIL'}"
            if "busy" in r
            else "-"
        )
        print(
            f"{r['variant']:7s}  {r['metric']:26s}  {_fmt(r['idle_1']):22s}  "
            f"{_fmt(r['idle_2']):22s}  {100 * r['idle_rel_diff']:4.1f}% "
            f"{'PASS' if r['pass_repeat'] else 'FAIL'}  "
            f"{100 * max(r['ci_width_rel']):4.1f}% {'PASS' if r['pass_width'] else 'FAIL'}  "
            f"{busy_s}"
        )
    print("targets: idle runs differ < 5%, CI narrower than 15% of the ratio, busy within 10%")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--skip-busy", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from compress.environment import cpu_features
    from compress.profile.run import device_name

    print(f"host: {device_name('cpu')} ({', '.join(cpu_features())})")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        arms = build(Path(tmp))
        for k, (_, _, pol) in arms.items():
            from compress.profile.kernels import describe

            print(f"{k}: {describe(pol)}")
        runs = {f"idle {i}": invoke(arms, args.pairs, seed=i) for i in (1, 2)}
        busy = None
        if not args.skip_busy:
            proc = busy_core()
            try:
                busy = invoke(arms, args.pairs, seed=3)
            finally:
                proc.kill()
    rows = report(runs, busy)
    print(f"wall {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
