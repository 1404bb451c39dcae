"""Run shipped recipes through the full `apply` on one device and print one side-by-side table.

Each recipe runs the whole loop (compress -> eval -> profile baseline and compressed in fresh
subprocesses -> report), so every ratio below comes from one run measured minutes apart on the
same machine. Used for the GPU runs (`--device cuda`) and any CPU subset.

    python benchmarks/recipes.py --device cuda --windows 40 \
        --recipes int4 int8 gptq-int4 awq-int4 smoothquant-w8a8 bnb-nf4 bnb-int8 \
        [--data-dir ../shared/data] [--out DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_one(
    path: Path, device: str, windows: int, data_dir: str, out: Path, progress: bool = False
) -> dict:
    """The full `apply` of the recipe at `path` with `windows` WikiText-2 windows."""
    from compress.pipeline import apply
    from compress.recipe import load_recipe, parse_recipe

    data = load_recipe(path).model_dump(mode="json")
    data["eval"]["wikitext2"]["max_windows"] = windows
    t0 = time.perf_counter()
    report, run_dir = apply(
        parse_recipe(data),
        recipe_text=path.read_text(),
        out_root=out,
        device=device,
        data_dir=data_dir,
        progress=progress,
    )
    return {"report": report, "run_dir": run_dir, "wall_s": time.perf_counter() - t0}


def _ratio(c) -> str:
    if c is None or c.ratio is None:
        return "n/a"
    iv = f" [{c.ratio_ci95[0]:.2f},{c.ratio_ci95[1]:.2f}]" if c.ratio_ci95 else ""
    return f"{c.ratio:.2f}x{iv}"


def summarize(name: str, res: dict) -> dict:
    r = res["report"]
    v = r.variants[0]  # one-variant recipes
    c = {x.metric: x for x in v.comparisons}
    ppl = c.get("wikitext2.perplexity")
    kld = next((m for m in v.record.measurements if m.name == "kld.mean"), None)
    dec = c.get("decode.tokens_per_s")
    energy = c.get("energy.joules_per_token")
    return {
        "recipe": name,
        "stages": [s.get("summary") for s in v.record.stages],
        "kernels": [s.get("kernel") for s in v.record.stages],
        "stage_s": [round(s.get("seconds") or 0, 1) for s in v.record.stages],
        "decode_tok_s": [dec.baseline, dec.compressed] if dec else None,
        "decode": _ratio(dec),
        "prefill": _ratio(c.get("prefill.tokens_per_s")),
        "weights": _ratio(c.get("weights.bytes")),
        "energy_per_token": _ratio(energy),
        "ppl": [ppl.baseline, ppl.compressed] if ppl else None,
        "ppl_delta_ci95": ppl.delta_ci95 if ppl else None,
        "kld": kld.value if kld else None,
        "gates": [f"{g.metric} {g.status}" for g in v.gates],
        "exit_code": r.exit_code,
        "apply_s": round(res["wall_s"], 1),
        "run_dir": str(res["run_dir"]),
        "device": r.environment.get("gpu") or r.environment.get("device"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", default=["int4", "int8"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--out", type=Path, help="keep the runs here (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="compress-recipes-") as tmp:
        out = args.out or Path(tmp)
        for name in args.recipes:
            print(f"\n=== {name} on {args.device}, {args.windows} windows ===", flush=True)
            try:
                path = REPO / "recipes" / f"{name}.yaml"
                row = summarize(name, run_one(path, args.device, args.windows, args.data_dir, out))
            except Exception as e:  # keep going: one broken recipe must not hide the others
                traceback.print_exc()
                row = {"recipe": name, "error": f"{type(e).__name__}: {e}"}
            print(json.dumps(row, indent=1, default=str), flush=True)
            rows.append(row)
            if args.json:  # rewritten after each recipe: a timeout keeps what finished
                args.json.write_text(json.dumps(rows, indent=2, default=str))

    print(
        "\nrecipe | decode x [CI] | prefill x | weights x | J/token x | ppl base->comp | KLD | "
        "apply s"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['recipe']} | FAILED: {r['error']}")
            continue
        ppl = f"{r['ppl'][0]:.3f}->{r['ppl'][1]:.3f}" if r["ppl"] else "n/a"
        kld = f"{r['kld']:.4f}" if r["kld"] is not None else "n/a"
        print(
            f"{r['recipe']} | {r['decode']} | {r['prefill']} | {r['weights']} | "
            f"{r['energy_per_token']} | {ppl} | {kld} | {r['apply_s']:.0f}"
        )


if __name__ == "__main__":
    main()
