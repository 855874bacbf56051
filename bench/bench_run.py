"""End-to-end `vbmd-rt run` latency per stage and peak memory, on cached phantoms.

    python bench/bench_run.py [--size small|full] [--repeat 3] [--cache .cache/bench]

Each run is a fresh subprocess (model load included in the wall time, peak RSS from VmHWM); the
stage timings come from the result JSON. Prints medians, the ratio to the paper's 32.98 s (3D,
RTX 2080) and the peak RSS / scan size ratio (target < 2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAPER_3D_S = 32.98
TARGET = {"small": 5.0, "full": 30.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="full", choices=["small", "full"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--cache", default=".cache/bench")
    a = ap.parse_args()
    cache = Path(a.cache) / f"{a.size}-{a.seed}"
    scan = cache / "PHANTOM_0000.AIM"
    if not scan.exists():
        subprocess.run([sys.executable, "-m", "vbmd_rt", "synth", cache, "--size", a.size, "--seed", str(a.seed), "-q"],
                       check=True)
    code = ("import sys; sys.argv=['vbmd-rt']+sys.argv[1:]\n"
            "from vbmd_rt.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('VMHWM', [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])")
    rows = []
    for _ in range(a.repeat):
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-c", code, "run", str(scan), "-o", out, "-q"], capture_output=True,
                               text=True, check=True)
            wall = time.perf_counter() - t0
            peak = int(r.stdout.split("VMHWM")[1].split()[0]) * 1024
            res = json.loads((Path(out) / "PHANTOM_0000.json").read_text())
            rows.append({"wall": wall, "peak": peak, **res["timings_s"]})
    size = scan.stat().st_size
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"scan {a.size}: {json.loads((cache / 'PHANTOM_0000.truth.json').read_text())['scan_slices']} slices, "
          f"{size / 2**20:.0f} MiB, backend onnxruntime-cpu, {a.repeat} runs")
    for k in ("read", "preprocess", "inference", "postprocess", "vbmd", "write", "total"):
        print(f"  {k:12s} median {med[k]:7.2f} s  (min {min(r[k] for r in rows):.2f}, max {max(r[k] for r in rows):.2f})")
    print(f"  process wall median {med['wall']:.2f} s (with interpreter start and model load)")
    print(f"  total / target {TARGET[a.size]:.0f} s: {med['total'] / TARGET[a.size]:.2f}; "
          f"total / paper 3D {PAPER_3D_S} s: {med['total'] / PAPER_3D_S:.2f}")
    print(f"  peak RSS {med['peak'] / 2**20:.0f} MiB = {med['peak'] / size:.2f} x scan size (target < 2)")


if __name__ == "__main__":
    main()
