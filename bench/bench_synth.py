"""Phantom generation benchmark: seconds per full-size case (target < 20 s on 2 cores).

Usage: ``python bench/bench_synth.py [--cases 3] [--size full]``. Prints per-case time,
slices, the median, and the ratio to the 20 s target.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def main() -> None:
    from vbmd_rt.synth.phantom import synth_case

    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--size", default="full")
    ap.add_argument("--seed", type=int, default=5)
    a = ap.parse_args()
    times = []
    with tempfile.TemporaryDirectory() as d:
        for i in range(a.cases):
            t0 = time.perf_counter()
            t = synth_case(d, i, a.seed, a.size)
            dt = time.perf_counter() - t0
            times.append(dt)
            print(f"case {i}: {t['scan_slices']} slices, {dt:.1f} s ({dt / t['scan_slices'] * 1000:.0f} ms/slice)")
    med = statistics.median(times)
    print(
        f"median {med:.1f} s per {a.size} case, min {min(times):.1f}, max {max(times):.1f}; "
        f"ratio to the 20 s target {med / 20:.2f}"
    )


if __name__ == "__main__":
    main()
