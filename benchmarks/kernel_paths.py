"""What can the stock PyTorch CPU kernels give on THIS host? Per SmolLM2 layer shape and row
count, the median time of every execution path side by side in one run: the fp32 and bf16
float GEMMs (the baseline and the `cast` control) and the weight-only paths over int8 and
packed int4 storage (`aten._weight_int8pack_mm`, int8 codes dequantized per call,
`aten._weight_int4pack_mm_for_cpu`). Weights cycle through enough copies to leave the cache,
as a decode step does when it streams the whole model from DRAM.

It prints, per shape and rows, each path's time and its speed-up over fp32 (> 1 = faster),
and, per row count, the speed-up of the best int8 / int4 path summed over one transformer
layer plus the head: an upper bound for what the linears alone can give a whole model (the
rest of a step, attention, norms and Python, does not shrink). Issue 7 sets decode >= 2.0x
and int4 prefill >= 1.0x; this shows whether a kernel exists here that could reach them.

    python benchmarks/kernel_paths.py [--threads 2] [--rows 1 8 128 512]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

# SmolLM2-135M: (out, in, how many per layer); the head is 49152 x 576, once per model
LAYER = [(576, 576, 2), (192, 576, 2), (1536, 576, 2), (576, 1536, 1)]
HEAD = (49152, 576)
LAYERS = 30
GROUP = 32
CACHE_BYTES = 256 * 2**20  # copies cycled per path: well past a 2-core VM's share of L3


def _median_us(fn, n: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def _cycled(make, nbytes: int) -> list:
    return [make() for _ in range(max(1, CACHE_BYTES // max(nbytes, 1)))]


def _paths(out_f: int, in_f: int) -> dict:
    """name -> (list of weight copies, fn(x_fp32, x_bf16, w))."""
    w = torch.randn(out_f, in_f) * 0.02
    q = torch.randint(-127, 128, (out_f, in_f), dtype=torch.int8)
    s, sb = torch.rand(out_f) * 1e-3, (torch.rand(out_f) * 1e-3).bfloat16()
    codes = torch.randint(0, 16, (out_f, in_f), dtype=torch.int32)
    sz = (torch.rand(in_f // GROUP, out_f, 2) * 1e-3).bfloat16()
    n = out_f * in_f
    return {
        "fp32": (_cycled(w.clone, 4 * n), lambda x, xb, w: F.linear(x, w)),
        "bf16 (cast)": (_cycled(w.bfloat16, 2 * n), lambda x, xb, w: F.linear(xb, w)),
        "int8pack": (_cycled(q.clone, n), lambda x, xb, w: torch._weight_int8pack_mm(xb, w, sb)),
        "int8 dequant fp32": (
            _cycled(q.clone, n),
            lambda x, xb, w: F.linear(x, w.float() * s[:, None]),
        ),
        "int4pack": (
            _cycled(lambda: torch._convert_weight_to_int4pack_for_cpu(codes, 1), n // 2),
            lambda x, xb, w: torch._weight_int4pack_mm_for_cpu(xb, w, GROUP, sz),
        ),
    }


def _time_shape(out_f: int, in_f: int, rows: int, n: int) -> dict[str, float]:
    x = torch.randn(rows, in_f)
    xb = x.bfloat16()
    out = {}
    for name, (copies, fn) in _paths(out_f, in_f).items():
        i = [0]

        def step(copies=copies, fn=fn, i=i):
            i[0] = (i[0] + 1) % len(copies)
            return fn(x, xb, copies[i[0]])

        out[name] = _median_us(step, n)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8, 128, 512])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from compress.environment import cpu_features
    from compress.profile.run import device_name

    print(f"host: {device_name('cpu')} ({', '.join(cpu_features())}); torch {torch.__version__}")
    print(f"threads {args.threads}; median of {args.repeats} calls; us, (x) = fp32 / path\n")
    shapes = [(o, i, k) for o, i, k in LAYER] + [(*HEAD, 0)]
    for rows in args.rows:
        totals: dict[str, float] = {}
        for out_f, in_f, per_layer in shapes:
            t = _time_shape(out_f, in_f, rows, args.repeats if out_f < 10_000 else 7)
            weight = per_layer * LAYERS if per_layer else 1
            t_best8 = min(t["int8pack"], t["int8 dequant fp32"])  # the chooser picks per shape
            for name, us in [*t.items(), ("best int8", t_best8)]:
                totals[name] = totals.get(name, 0.0) + weight * us
            cells = "  ".join(f"{k} {v:8.0f} ({t['fp32'] / v:4.2f}x)" for k, v in t.items())
            print(f"rows {rows:4d}  {out_f:5d}x{in_f:<5d} {cells}")
        base = totals["fp32"]
        best8 = totals["best int8"]
        print(
            f"rows {rows:4d}  whole-model linears: fp32 {base / 1e3:.1f} ms; bf16 cast "
            f"{base / totals['bf16 (cast)']:.2f}x; best int8 path per shape {base / best8:.2f}x; "
            f"int4pack {base / totals['int4pack']:.2f}x (upper bounds: only the linears)\n",
            flush=True,
        )


if __name__ == "__main__":
    main()
