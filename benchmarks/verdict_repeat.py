"""Does the same recipe give the same verdict run after run? `compress apply RECIPE --quick`
N times in a row on this host (target: the same exit code every time), printing each run's
exit code, decode ratio with its interval and gate statuses.

    python benchmarks/verdict_repeat.py [--recipe recipes/int4.yaml] [--runs 5]
        [--data-dir ../shared/data] [--full]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/int4.yaml")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--full", action="store_true", help="full recipe instead of --quick")
    args = ap.parse_args()
    from compress.environment import cpu_features
    from compress.profile.run import device_name

    print(f"host: {device_name('cpu')} ({', '.join(cpu_features())}); {args.recipe}")
    codes = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            out = Path(tmp) / str(i)
            cmd = [sys.executable, "-m", "compress", "apply", args.recipe, "--out", str(out)]
            cmd += ["--data-dir", args.data_dir, "--no-progress"]
            cmd += [] if args.full else ["--quick"]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            reports = sorted(out.glob("*/*/report.json"))
            if not reports:
                print(f"run {i + 1}: exit {proc.returncode}, no report\n{proc.stderr[-2000:]}")
                codes.append(proc.returncode)
                continue
            r = json.loads(reports[-1].read_text())["variants"][0]  # one-variant recipes
            cmp = {c["metric"]: c for c in r["comparisons"]}
            d = cmp["decode.tokens_per_s"]
            gates = ", ".join(f"{g['metric']} {g['status']}" for g in r["gates"])
            print(
                f"run {i + 1}: exit {proc.returncode}  decode {d['ratio']:.3f}x "
                f"[{d['ratio_ci95'][0]:.3f}, {d['ratio_ci95'][1]:.3f}]  {gates}  ({wall:.0f} s)",
                flush=True,
            )
            codes.append(proc.returncode)
    same = len(set(codes)) == 1
    print(f"exit codes {codes}: {'the same every time (PASS)' if same else 'they differ (FAIL)'}")


if __name__ == "__main__":
    main()
