"""AIM I/O benchmark: read a full-size int16 scan, write a full-size binary mask.

Targets (issue 2): reading a 1536 x 1536 x 320 int16 AIM (1.5 GB) into an array costs at most
1.5x ``np.fromfile`` on the same bytes, with peak memory at most the file size + 10%; writing
a binary run-length mask of that size takes under 2 s.

Each measurement runs in a fresh subprocess (so peak RSS is its own), alternating ours and
the baseline, and prints medians and the ratio. Usage::

    python bench/bench_aim_io.py [--slices 320] [--repeat 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _make_files(folder: Path, nz: int) -> tuple[Path, Path]:
    from vbmd_rt.runtime.io.aim import AimHeader, write_aim

    scan = folder / f"bench_{nz}.aim"
    mask = folder / f"bench_{nz}_mask.npy"
    if not scan.exists():
        rng = np.random.default_rng(0)
        slab = rng.integers(-500, 9000, size=(8, 1536, 1536), dtype=np.int16)
        data = np.lib.format.open_memmap(folder / "tmp.npy", mode="w+", dtype=np.int16, shape=(nz, 1536, 1536))
        for z in range(0, nz, 8):
            data[z : z + 8] = slab[: min(8, nz - z)]
        data.flush()
        write_aim(scan, data, AimHeader(version=2, type_code=0x00020002, dim=(1, 1, 1)))
        del data
        os.unlink(folder / "tmp.npy")
    if not mask.exists():
        z, y, x = np.ogrid[:nz, :1536, :1536]
        # A bone-like mask: an ellipse per slice that drifts along z.
        m = ((y - 700 - z * 0.5) / 180.0) ** 2 + ((x - 760) / 140.0) ** 2 < 1.0
        np.save(mask, np.where(m, 127, 0).astype(np.int8))
    return scan, mask


def _peak_rss() -> int:
    """This process's peak RSS (VmHWM). ru_maxrss would include the parent's peak before exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(kind: str, scan: str, mask: str) -> None:
    from vbmd_rt.runtime.io.aim import read_aim, read_header, write_aim

    t0 = time.perf_counter()
    if kind == "fromfile":
        h = read_header(scan)
        a = np.fromfile(scan, dtype="<i2", offset=h.byte_offset).reshape(h.shape)
        checksum = int(a.max())
    elif kind == "read_aim":
        a = read_aim(scan).data
        checksum = int(a.max())
    elif kind == "write_binary":
        m = np.load(mask)
        t0 = time.perf_counter()
        out = Path(scan).with_name("bench_out_mask.aim")
        write_aim(out, m, type="binary-rle")
        checksum = out.stat().st_size
        out.unlink()
    else:
        raise SystemExit(f"unknown {kind}")
    dt = time.perf_counter() - t0
    rss = _peak_rss()
    print(json.dumps({"kind": kind, "seconds": dt, "peak_rss_bytes": rss, "checksum": checksum}))


def _run(kind, scan, mask) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(scan), str(mask)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=320)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cache", default=os.environ.get("VBMD_RT_BENCH_CACHE", tempfile.gettempdir() + "/vbmd-rt-bench"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", nargs=3, default=None)
    a = ap.parse_args()
    if a.child:
        _child(*a.child)
        return
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    scan, mask = _make_files(cache, a.slices)
    size = scan.stat().st_size
    _run("fromfile", scan, mask)  # warm the page cache for both
    res: dict[str, list[dict]] = {"fromfile": [], "read_aim": [], "write_binary": []}
    for _ in range(a.repeat):
        for k in res:
            res[k].append(_run(k, scan, mask))
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in res.items()}
    peak = {k: max(r["peak_rss_bytes"] for r in v) for k, v in res.items()}
    summary = {
        "file_bytes": size,
        "shape_zyx": [a.slices, 1536, 1536],
        "median_s": med,
        "min_s": {k: min(r["seconds"] for r in v) for k, v in res.items()},
        "max_s": {k: max(r["seconds"] for r in v) for k, v in res.items()},
        "peak_rss_bytes": peak,
        "read_ratio_vs_fromfile": med["read_aim"] / med["fromfile"],
        "read_peak_rss_over_file": peak["read_aim"] / size,
        "cpu_count": os.cpu_count(),
    }
    print(f"scan {a.slices}x1536x1536 int16, {size / 1e9:.2f} GB, {a.repeat} runs each (page cache warm)")
    print(f"{'':16}{'median s':>10}{'min s':>10}{'max s':>10}{'peak RSS GB':>13}")
    for k in res:
        print(f"{k:16}{med[k]:10.3f}{summary['min_s'][k]:10.3f}{summary['max_s'][k]:10.3f}{peak[k] / 1e9:13.2f}")
    print(f"read_aim / np.fromfile = {summary['read_ratio_vs_fromfile']:.2f} (target <= 1.5)")
    print(f"read_aim peak RSS / file size = {summary['read_peak_rss_over_file']:.2f} (target <= 1.10)")
    print(f"binary RLE mask write median = {med['write_binary']:.2f} s (target < 2 s)")
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
