"""Structured pruning + distillation on SmolLM2, side by side, from the shipped recipes.

Each recipe runs the whole loop (`compress apply`: structured -> distill [-> gptq] -> eval on
the same WikiText-2 test windows for every model -> paired, interleaved timing in fresh
processes -> gates), so every row below is measured in one run on one machine. The recipes
carry a control variant (pruned, not distilled), so the distilled student's recovery is
measured against the very model it was trained from, on the same windows:

    recovery = (ppl_dropped - ppl_distilled) / (ppl_dropped - ppl_base)

with a 95% paired bootstrap interval over windows (the three models' per-window NLLs are
resampled together). Targets (issue: structured pruning + distillation), fixed before the run:
  depth 25% + distill (<= 30 min of training): recovery >= 0.5, decode >= 1.25x
  width 25% of MLP channels:                   decode >= 1.15x, recovery >= 0.5 with distill
  structured -> distill -> gptq int4:          weights <= 0.2x, ppl reported

    python benchmarks/prune_distill.py                     # the three recipes, 40 windows
    python benchmarks/prune_distill.py --recipes depth25-distill --json out.json
    python benchmarks/prune_distill.py --smoke             # wiring only: 2 windows, 1 min
"""

from __future__ import annotations

import argparse
import json
import math
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("depth25-distill", "width25-distill", "prune-distill-int4")
MIN_WINDOWS = 40  # the floor for a result
DISTILL_MINUTES_MAX = 30.0


def run_recipe(name: str, windows: int, data_dir: str, out: Path, smoke: bool) -> dict:
    from compress.pipeline import apply
    from compress.recipe import load_recipe, parse_recipe

    path = REPO / "recipes" / f"{name}.yaml"
    data = load_recipe(path).model_dump(mode="json")
    data["eval"]["wikitext2"]["max_windows"] = windows
    if smoke:  # wiring only: tiny budgets, numbers meaningless
        for v in data.get("variants") or [{"stages": data["stages"]}]:
            for s in v["stages"]:
                if s["method"] == "distill":
                    s.update(minutes=None, steps=2, tokens=None, eval_every=1)
        data["profile"].update(quick_pairs=2, quick_repeats=1, batch_sizes=[1])
    t0 = time.perf_counter()
    report, run_dir = apply(
        parse_recipe(data),
        recipe_text=path.read_text(),
        out_root=out,
        data_dir=data_dir,
        quick=smoke,
        progress=False,
    )
    return {"report": report, "run_dir": run_dir, "wall_s": time.perf_counter() - t0}


def _shape(stages: list[dict]) -> str:
    after = next(
        (
            s["details"]["shape_after"]
            for s in reversed(stages)
            if s.get("method") == "structured" and s.get("details", {}).get("shape_after")
        ),
        None,
    )
    if after is None:
        return "unchanged"
    return (
        f"{after['layers']}L/{after['intermediate_size']}mlp/"
        f"{after['num_attention_heads']}h{after['num_key_value_heads']}kv"
    )


def _ratio(c) -> str:
    if c is None or c.ratio is None:
        return "n/a"
    iv = f" [{c.ratio_ci95[0]:.2f},{c.ratio_ci95[1]:.2f}]" if c.ratio_ci95 else ""
    return f"{c.ratio:.2f}x{iv}"


def _distill(stages: list[dict]) -> dict:
    d = next((s for s in stages if s.get("method") == "distill"), None)
    if d is None:
        return {}
    det = d.get("details", {})
    return {
        "distill_s": d.get("seconds"),
        "train_s": det.get("train_seconds"),
        "steps": det.get("steps"),
        "tokens": det.get("tokens_seen"),
        "kld_before": det.get("kld_before"),
        "kld_after": det.get("kld_after"),
    }


def rows_of(name: str, res: dict) -> list[dict]:
    """One row per variant of a finished run."""
    r = res["report"]
    out = []
    for v in r.variants:
        c = {x.metric: x for x in v.comparisons}
        ppl, kld = c.get("wikitext2.perplexity"), v.record.get("kld.mean")
        nll = v.record.get("wikitext2.nll")
        out.append(
            {
                "recipe": name,
                "variant": v.name,
                "control": v.control,
                "shape": _shape(v.record.stages),
                "ppl": ppl.compressed if ppl else None,
                "ppl_base": ppl.baseline if ppl else None,
                "ppl_delta": ppl.delta if ppl else None,
                "ppl_delta_ci95": ppl.delta_ci95 if ppl else None,
                "kld": kld.value if kld else None,
                "decode": _ratio(c.get("decode.tokens_per_s")),
                "decode_ratio": getattr(c.get("decode.tokens_per_s"), "ratio", None),
                "decode_ci95": getattr(c.get("decode.tokens_per_s"), "ratio_ci95", None),
                "prefill": _ratio(c.get("prefill.tokens_per_s")),
                "weights_ratio": getattr(c.get("weights.bytes"), "ratio", None),
                "exit_code": v.exit_code,
                "nll_windows": list(nll.samples) if nll else [],
                **_distill(v.record.stages),
            }
        )
    base_nll = r.baseline.get("wikitext2.nll")
    for row in out:
        row["base_nll_windows"] = list(base_nll.samples) if base_nll else []
    return out


def recovery(base: list[float], dropped: list[float], student: list[float]) -> dict:
    """(ppl_dropped - ppl_student) / (ppl_dropped - ppl_base) with a paired 95% bootstrap
    interval over windows (scipy.stats.bootstrap, BCa; percentile if BCa cannot run)."""
    import numpy as np
    from scipy import stats

    b, d, s = (np.asarray(x, dtype=float) for x in (base, dropped, student))

    def stat(b, d, s, axis=-1):
        pb, pd, ps = (np.exp(np.mean(x, axis=axis)) for x in (b, d, s))
        return (pd - ps) / (pd - pb)

    point = float(stat(b, d, s))
    if len(b) < 3:
        return {"value": point, "ci95": None, "n": len(b)}
    kw = dict(paired=True, vectorized=True, n_resamples=4999, random_state=0)
    try:
        res = stats.bootstrap((b, d, s), stat, method="BCa", **kw)
    except Exception:  # degenerate resamples: fall back to the percentile interval
        res = stats.bootstrap((b, d, s), stat, method="percentile", **kw)
    lo, hi = res.confidence_interval
    return {"value": point, "ci95": [float(lo), float(hi)], "n": len(b), "method": "paired BCa"}


def _fmt(x, spec=".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def print_table(rows: list[dict]) -> None:
    cols = (
        "recipe/variant",
        "shape after",
        "ppl",
        "ppl delta [95%]",
        "KLD",
        "decode x [95%]",
        "prefill x [95%]",
        "weights x",
        "distill min (steps, tokens)",
    )
    print(" | ".join(cols))
    for r in rows:
        iv = r["ppl_delta_ci95"]
        delta = f"{_fmt(r['ppl_delta'], '+.3f')}" + (f" [{iv[0]:+.3f},{iv[1]:+.3f}]" if iv else "")
        dist = (
            f"{r['distill_s'] / 60:.1f} ({r['steps']}, {r['tokens'] / 1e3:.0f}k)"
            if r.get("distill_s")
            else "-"
        )
        print(
            " | ".join(
                [
                    f"{r['recipe']}/{r['variant']}" + (" (control)" if r["control"] else ""),
                    r["shape"],
                    _fmt(r["ppl"]),
                    delta,
                    _fmt(r["kld"], ".4f"),
                    r["decode"],
                    r["prefill"],
                    _fmt(r["weights_ratio"]),
                    dist,
                ]
            )
        )


def _verdict(ok: bool | None) -> str:
    return {True: "MET", False: "MISSED", None: "NOT MEASURED"}[ok]


def check_targets(rows: list[dict]) -> list[str]:
    """The issue's targets, each MET / MISSED on the point estimate (intervals printed)."""
    by = {(r["recipe"], r["variant"]): r for r in rows}
    lines = []
    for recipe, dropped, student, decode_min in (
        ("depth25-distill", "depth25", "depth25-distill", 1.25),
        ("width25-distill", "width25", "width25-distill", 1.15),
    ):
        d, s = by.get((recipe, dropped)), by.get((recipe, student))
        if not d or not s:
            continue
        rec = recovery(s["base_nll_windows"], d["nll_windows"], s["nll_windows"])
        s["recovery"] = rec
        iv = f" [{rec['ci95'][0]:.2f}, {rec['ci95'][1]:.2f}]" if rec["ci95"] else ""
        lines.append(
            f"{student}: recovers {rec['value']:.2f}{iv} of the perplexity lost by pruning "
            f"({d['ppl']:.3f} -> {s['ppl']:.3f}, base {s['ppl_base']:.3f}, n {rec['n']} "
            f"windows; target >= 0.50) {_verdict(rec['value'] >= 0.5)}"
        )
        minutes = (s.get("train_s") or 0) / 60
        lines.append(
            f"{student}: {minutes:.1f} min of training (target <= {DISTILL_MINUTES_MAX:.0f}) "
            f"{_verdict(minutes <= DISTILL_MINUTES_MAX if s.get('train_s') else None)}"
        )
        dr = s["decode_ratio"]
        lines.append(
            f"{student}: decode {s['decode']} (target >= {decode_min}x) "
            f"{_verdict(None if dr is None else dr >= decode_min)}"
        )
    for r in rows:
        if r["recipe"] == "prune-distill-int4" and not r["control"]:
            w = r["weights_ratio"]
            lines.append(
                f"prune-distill-int4/{r['variant']}: weights {_fmt(w)}x (target <= 0.2x) "
                f"{_verdict(None if w is None else w <= 0.2)}; ppl {_fmt(r['ppl'])} "
                f"(base {_fmt(r['ppl_base'])})"
            )
    return lines


def summarize_runs(run_dirs: list[Path], json_out: Path | None) -> None:
    """The table and targets of run folders written earlier by this script (or by
    `compress apply` of the shipped recipes)."""
    from compress.report.load import load_report

    rows = []
    for d in run_dirs:
        report, path = load_report(d)
        name = next(
            (r for r in RECIPES if report.recipe.get("name") == f"smollm2-{r}"), path.parent.name
        )
        res = {"report": report, "run_dir": path.parent, "wall_s": report.run.get("wall_s")}
        rows += [{**r, "wall_s": res["wall_s"], "run_dir": str(d)} for r in rows_of(name, res)]
    print_table(rows)
    print("\ntargets:")
    for line in check_targets(rows):
        print("  " + line)
    if json_out:
        json_out.write_text(json.dumps({"rows": rows}, indent=2, default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    ap.add_argument("--windows", type=int, default=MIN_WINDOWS)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--out", type=Path, default=None, help="run folders (default: temporary)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--smoke", action="store_true", help="2-step distills, few windows: wiring")
    ap.add_argument(
        "--from-runs", nargs="+", type=Path, default=[], help="summarize finished run folders"
    )
    args = ap.parse_args()
    if args.from_runs:
        return summarize_runs(args.from_runs, args.json)
    if args.windows < MIN_WINDOWS and not args.smoke:
        ap.error(f"--windows {args.windows}: a result needs >= {MIN_WINDOWS} windows of 2048")
    import tempfile

    from compress.environment import _cpu_name

    out = args.out or Path(tempfile.mkdtemp(prefix="compress-pd-"))
    rows, failed = [], {}
    for name in args.recipes:
        print(f"--- {name}", flush=True)
        try:
            res = run_recipe(
                name, 2 if args.smoke else args.windows, args.data_dir, out, args.smoke
            )
        except Exception as e:  # a recipe that cannot run is reported, not hidden
            failed[name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            continue
        print(
            f"    {res['run_dir']} in {res['wall_s'] / 60:.1f} min, exit {res['report'].exit_code}"
        )
        rows += [
            {**r, "wall_s": res["wall_s"], "run_dir": str(res["run_dir"])}
            for r in rows_of(name, res)
        ]
    print(f"\nhost: {_cpu_name()}; runs under {out}")
    print_table(rows)
    print("\ntargets:")
    for line in check_targets(rows):
        print("  " + line)
    for name, err in failed.items():
        print(f"  {name}: FAILED {err[:300]}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "failed": failed}, indent=2, default=str))


if __name__ == "__main__":
    main()
