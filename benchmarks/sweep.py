"""A 12-point sweep on SmolLM2 through Ray vs the same trials one after another in one process,
measured side by side in one run on this host.

Runs `sweeps/smollm2-int4-grid.yaml` (rtn/gptq x 3/4 bits x group 32/64/128) with `--quick`
evals, each as a fresh `compress sweep` process, then checks the issue's targets (sweeps on
Ray):

  overhead   `--executor ray` wall time <= 1.2x `--executor local` (the same trials, the same
             trial code, run one after another in one process without Ray)
  identical  every trial's quality numbers (perplexity, KLD, weights bytes) are equal between
             the two executors, and a standalone `compress apply` of one trial's recipe gives
             the same numbers again (timings differ run to run; they are printed, not compared)
  resume     the Ray sweep re-run in its folder runs no trial again

Shortened, and stated in the output: gptq calibrates on `--calibration-samples` (default 32,
the sweep file says 128) x 512 tokens, and the base recipe's profile times batch 1 only, no
extra prefill lengths, 2 quick rounds, with `kernels: fixed` (quality numbers bit-reproducible
between runs; with `auto` a close kernel timing can change the last digits). Host-speed
targets live here, never in tests.

    python benchmarks/sweep.py --out reports/examples/sweep-bench [--order ray,local]
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
SWEEP = REPO / "sweeps" / "smollm2-int4-grid.yaml"
OVERHEAD_MAX = 1.2  # fixed before the run (the target)
EXACT = ("ppl", "kld", "weights_bytes")


#: the base recipe's profile, shortened so two 12-trial sweeps fit a session (stated in the
#: output); kernels fixed so quality numbers are bit-reproducible between runs (see README)
PROFILE = {"batch_sizes": [1], "prefill_lengths": [], "quick_pairs": 2, "quick_repeats": 2,
           "kernels": "fixed"}  # fmt: skip


def derived_sweep(out: Path, samples: int) -> Path:
    data = yaml.safe_load(SWEEP.read_text())
    base = yaml.safe_load((SWEEP.parent / data["recipe"]).read_text())
    base["profile"] = dict(base.get("profile") or {}, **PROFILE)
    (out / "base.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    data["recipe"] = "base.yaml"
    data["calibration"] = dict(data.get("calibration") or {}, samples=samples)
    path = out / "sweep.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def compress_cli(*args: str) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "compress", *args], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t0
    if p.returncode not in (0, 1, 3):
        sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
    return wall, p.returncode, p.stdout + p.stderr


def numbers(report_json: Path) -> dict[str, float | None]:
    """The quality numbers a trial must reproduce exactly, and its timing (not compared)."""
    rep = json.loads(report_json.read_text())
    v = rep["variants"][0]
    ms = {m["name"]: m["value"] for m in v["record"]["measurements"]}
    return {
        "ppl": ms.get("wikitext2.perplexity"),
        "kld": ms.get("kld.mean"),
        "weights_bytes": ms.get("weights.bytes"),
        "decode_tok_s": ms.get("decode.tokens_per_s"),
    }


def trials(sweep_dir: Path) -> dict[str, dict]:
    data = json.loads((sweep_dir / "sweep.json").read_text())
    return {t["name"]: t for t in data["trials"] if t["status"] != "skipped"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--calibration-samples", type=int, default=32)
    ap.add_argument("--order", default="local,ray", help="which executor runs first")
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--reuse",
        type=Path,
        help="an earlier output folder: skip the two sweeps "
        "(their walls are read from its bench.json or --walls), redo the checks",
    )
    ap.add_argument("--walls", help="local,ray wall seconds of the reused sweeps")
    args = ap.parse_args()
    common = ["--quick", "--no-progress", "--data-dir", args.data_dir]
    result: dict = {"host": _host(), "calibration_samples": args.calibration_samples,
                    "profile_override": PROFILE, "runs": {}}  # fmt: skip
    if args.reuse:
        out = args.reuse.resolve()
        sweep = out / "sweep.yaml"
        for ex, wall in zip(args.order.split(","), map(float, args.walls.split(",")), strict=True):
            result["runs"][ex] = {"wall_s": wall, "exit_code": None, "reused": True}
    else:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        out = (args.out / stamp).resolve()
        out.mkdir(parents=True)
        sweep = derived_sweep(out, args.calibration_samples)
        for ex in args.order.split(","):
            wall, rc, _ = sweep_cli(sweep, ex, out, common)
            result["runs"][ex] = {"wall_s": wall, "exit_code": rc}
            print(f"{ex}: {wall:.1f} s, exit {rc}", flush=True)
    name = yaml.safe_load(sweep.read_text())["name"]
    ray_dir, local_dir = out / "ray" / name, out / "local" / name
    done = {n for n, t in trials(ray_dir).items() if t["status"] == "done"}
    before = {p: p.read_text() for p in ray_dir.glob("trials/*/trial.json")}
    wall, rc, text = sweep_cli(sweep, "ray", out, common)
    rerun = sorted(p.parent.name for p in before if p.read_text() != before[p])
    result["resume"] = {"wall_s": wall, "exit_code": rc, "done_before": len(done),
                        "earlier": text.count("(earlier)"), "rerun": rerun,
                        "done_rerun": sorted(set(rerun) & done)}  # fmt: skip
    rows = compare_trials(local_dir, ray_dir)
    first = next(r["trial"] for r in rows if r["local"])
    standalone = _standalone(out, local_dir / trials(local_dir)[first]["run_dir"], common)
    sa = numbers(standalone) if standalone else {}
    ref = next(r["local"] for r in rows if r["trial"] == first)
    same_sa = bool(sa) and all(sa[k] == ref[k] for k in EXACT)
    result["standalone"] = {"trial": first, "numbers": sa, "identical": same_sa}
    ratio = result["runs"]["ray"]["wall_s"] / result["runs"]["local"]["wall_s"]
    result["targets"] = {
        "overhead": {"ratio": ratio, "max": OVERHEAD_MAX, "met": ratio <= OVERHEAD_MAX},
        "identical": {"trials": len(rows), "met": all(r["identical"] for r in rows) and same_sa},
        "resume": {"met": not result["resume"]["done_rerun"]
                   and result["resume"]["earlier"] == len(done) > 0},
    }  # fmt: skip
    result["rows"] = rows
    _print(result)
    text = json.dumps(result, indent=2)
    (out / "bench.json").write_text(text)
    if args.json:
        args.json.write_text(text)


def sweep_cli(sweep: Path, executor: str, out: Path, common: list[str]):
    return compress_cli(
        "sweep", str(sweep), "--executor", executor, "--out", str(out / executor), *common
    )


def compare_trials(local_dir: Path, ray_dir: Path) -> list[dict]:
    a, b = trials(local_dir), trials(ray_dir)
    rows = []
    for n in a:
        na = numbers(local_dir / a[n]["run_dir"] / "report.json") if a[n].get("run_dir") else {}
        rb = b.get(n, {})
        nb = numbers(ray_dir / rb["run_dir"] / "report.json") if rb.get("run_dir") else {}
        if na:
            eq = all(na.get(k) == nb.get(k) for k in EXACT)
        else:  # a trial that failed must fail the same way under both executors
            eq = a[n]["status"] == rb.get("status") and a[n].get("exit_code") == rb.get("exit_code")
        rows.append({"trial": n, "local": na, "ray": nb, "identical": eq,
                     "status": [a[n]["status"], rb.get("status")]})  # fmt: skip
    return rows


def _standalone(out: Path, run_dir: Path, common: list[str]) -> Path | None:
    """The trial's recipe (as its report recorded it) through a plain `compress apply`."""
    recipe = json.loads((run_dir / "report.json").read_text())["recipe"]
    recipe = {k: v for k, v in recipe.items() if not k.startswith("_")}  # _sha256, _text
    path = out / "standalone.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    compress_cli("apply", str(path), "--out", str(out / "standalone"), *common)
    found = sorted((out / "standalone").glob("*/*/report.json"))
    return found[-1] if found else None


def _host() -> str:
    from compress.environment import _cpu_name

    return _cpu_name()


def _print(r: dict) -> None:
    print(f"\nhost: {r['host']}; gptq calibration {r['calibration_samples']} x 512 tokens; "
          f"profile override {r['profile_override']}")  # fmt: skip
    print(f"{'trial':32} {'ppl local':>10} {'ppl ray':>10} {'KLD local':>10} {'KLD ray':>10} "
          f"{'tok/s local':>11} {'tok/s ray':>10} same")  # fmt: skip
    for row in r["rows"]:
        a, b = row["local"], row["ray"]
        print(f"{row['trial']:32} {_f(a.get('ppl')):>10} {_f(b.get('ppl')):>10} "
              f"{_f(a.get('kld')):>10} {_f(b.get('kld')):>10} {_f(a.get('decode_tok_s')):>11} "
              f"{_f(b.get('decode_tok_s')):>10} {row['identical']}")  # fmt: skip
    for ex, run in r["runs"].items():
        print(f"{ex}: {run['wall_s']:.1f} s (exit {run['exit_code']})")
    print(f"resume: {r['resume']}")
    sa = r["standalone"]
    print(f"standalone apply of {sa['trial']}: identical={sa['identical']} {sa['numbers']}")
    for k, t in r["targets"].items():
        print(f"target {k}: {'met' if t['met'] else 'MISSED'} {t}")


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


if __name__ == "__main__":
    main()
