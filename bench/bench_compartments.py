"""What the compartments (issue 22) add to a full-size `vbmd-rt run`: the endosteal contour and parameters
(``runtime.compartments.analyse``, inside the mask's box) and the two extra masks (``NAME_CORT_MASK.AIM``,
``NAME_TRAB_MASK.AIM``, binary run-length). Target: at most 0.5 s on 2 CPU cores.

Usage: ``python bench/bench_compartments.py [--scan SCAN.AIM --mask MASK.AIM] [--runs 5]``; without
``--scan``, the full-size phantom of ``vbmd-rt bench`` (``.cache/bench/full-2024``, made when missing) and
its true mask. Prints median (min-max) wall seconds of each part in this process after one warm-up, and
the CPU seconds of all threads (what a busy machine inflates less).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scan", type=Path)
    ap.add_argument("--mask", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=Path(".cache/bench"))
    a = ap.parse_args()
    from vbmd_rt.bench.suite import _phantom
    from vbmd_rt.runtime import compartments, pipeline
    from vbmd_rt.runtime.io import masks
    from vbmd_rt.runtime.io.naming import compartment_masks

    scan_path = a.scan or _phantom(a.cache, "full", 2024)
    mask_path = a.mask or scan_path.with_name(scan_path.stem + "_GT.AIM")
    scan = pipeline.read_scan(scan_path)
    mask = masks.read_mask_file(mask_path, scan.header)
    box = masks.bounding_box(mask)
    hint = tuple(int(v) for s in box for v in (s.start, s.stop))  # run knows its work box: no search of the scan
    spacing = scan.spacing_zyx
    times: dict[str, list[float]] = {
        "contour and parameters": [],
        "two masks (rle)": [],
        "total": [],
        "CPU seconds (all threads)": [],
    }
    with tempfile.TemporaryDirectory() as d:
        for i in range(a.runs + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            c = compartments.analyse(scan.data, mask, spacing, scan.calibration, hint)
            t1 = time.perf_counter()
            masks.write_compartments(compartment_masks("B", Path(d)), c.labels, c.box, scan.header, "rle")
            t2, c2 = time.perf_counter(), time.process_time()
            if i:  # the first is the warm-up
                times["contour and parameters"].append(t1 - t0)
                times["two masks (rle)"].append(t2 - t1)
                times["total"].append(t2 - t0)
                times["CPU seconds (all threads)"].append(c2 - c0)
    z, y, x = (s.stop - s.start for s in c.box)
    print(f"{scan_path.name}: {scan.data.shape} voxels, mask box {z} x {y} x {x}, {a.runs} runs")
    for k, v in times.items():
        print(f"  {k}: {statistics.median(v):.3f} s ({min(v):.3f}-{max(v):.3f})")
    med = statistics.median(times["total"])
    print(f"added to run: {med:.3f} s; target 0.5 s: {'met' if med <= 0.5 else 'missed'}")
    v = c.values
    print(
        f"Ct.BMD {v['ct_bmd_mg_ha_cm3']}, Tb.BMD {v['tb_bmd_mg_ha_cm3']} mg HA/cm3, Ct.Th {v['ct_th_mm']} mm, "
        f"Tb.BV/TV {v['tb_bv_tv']}"
    )


if __name__ == "__main__":
    main()
