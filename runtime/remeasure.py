"""D100 from a mask someone made or corrected (IPL, 3D Slicer, ITK-SNAP, contours): ``vbmd-rt measure``.

The same measurement as ``vbmd-rt run`` (``measure.vbmd`` on the scan's grid), the same result JSON,
with the network replaced by the given mask. The mask is checked before it is measured: it must fit the
scan's grid (voxel size, extent) and hold voxels; a mask that is not brighter than its surroundings or
whose size or density is far from an MC2's is measured but flagged for review: the mask gets the same QC
verdict as ``run``'s, with the same limits (``qc.assess_mask``, ``qc.LIMITS``: contrast, baseline agreement,
which bone, shape, ranges), read from the shaft as ``run`` reads them: a stack written from the fingers to
the wrist (``identify.slice_order``) is viewed turned, and one whose direction is uncertain is ``review``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from vbmd_rt.runtime import compartments, measure, qc, report
from vbmd_rt.runtime.errors import OutputError, VbmdInputError
from vbmd_rt.runtime.io import masks, nifti, outputs
from vbmd_rt.runtime.io.atomic import atomic_write_bytes, check_writable_dir
from vbmd_rt.runtime.io.naming import measure_outputs_for, scan_name
from vbmd_rt.runtime.model import sha256_of
from vbmd_rt.runtime.postprocess import detect_side
from vbmd_rt.runtime.result import Record, timings


def slice_order_of(scan):
    """Which way the scan's slices run (``identify.slice_order``, on run's model grid); the slices as written
    where the field of view holds no hand (``run`` refuses it; a given mask is measured all the same)."""
    from vbmd_rt.runtime import bonewin, identify

    vol, _ = bonewin.model_volume(scan.data, scan.spacing_zyx, scan.calibration)
    return identify.slice_order(vol, float(bonewin.GRID.spacing_mm))


def measure_mask(
    scan_path: str | Path,
    mask_path: str | Path,
    out: str | Path | None = None,
    export: str | None = None,
    overwrite: bool = False,
    report_html: bool = False,
) -> dict:
    """D100 of ``scan_path`` inside ``mask_path``; with ``out``: ``OUT/NAME.json`` and ``NAME.png`` (the
    HTML report with ``report_html``, the NIfTI/MHA pair with ``export``), written only after every check
    passed. Returns the result."""
    from vbmd_rt.runtime.pipeline import NO_CALIBRATION, STAGES, Timer, read_scan

    scan_path, mask_path = Path(scan_path), Path(mask_path)
    timer = Timer()
    t0 = time.perf_counter()
    name = scan_name(scan_path)
    files = {}
    if out is not None:
        out = Path(out)
        files = measure_outputs_for(name, out, report_html, export)  # the JSON last: committed last
        if not overwrite:
            for f in files.values():
                if f.exists():
                    raise OutputError(
                        f, "output already exists", "pass --overwrite to replace it, or choose another -o"
                    )
    with timer("read"):
        scan = read_scan(scan_path)
        mask = masks.read_mask_file(mask_path, scan.header)
    voxels = int(np.count_nonzero(mask))
    if voxels == 0:
        raise VbmdInputError(
            mask_path, "is empty on this scan's grid", "pass a mask with MC2 in it, drawn on this scan"
        )
    cal = scan.calibration
    with timer("identify"):
        stack = slice_order_of(scan)
    with timer("vbmd"):
        m = measure.vbmd(scan.data, mask, scan.spacing_zyx, cal)
        comp = compartments.analyse(scan.data, mask, scan.spacing_zyx, cal)
        seen = (lambda a: a[::-1]) if stack.reversed else (lambda a: a)  # QC reads the shaft first, as run's
        verdict = qc.assess_mask(seen(scan.data), seen(mask), scan.spacing_zyx, cal, m, compartments=comp)
        reasons = list(verdict["reasons"])  # run's limits
        if stack.reason:
            reasons.append(stack.reason)
        side = detect_side(scan.data, mask)
    if cal is None:  # no D100 without a calibration: never a pass
        reasons.append(NO_CALIBRATION)
    warnings = [f"mask needs review: {r}" for r in reasons]
    if cal is None:
        warnings.append("scan has no density calibration in its header: vBMD not computed")
    given = {"file": mask_path.name, "sha256": sha256_of(mask_path), "voxels": voxels, "source": "given"}
    qc_record = {**verdict, "status": "review" if reasons else "pass", "reasons": reasons, "stack": stack.to_dict()}
    rec = Record.of_given_mask(scan_path, scan, m, side, given, compartments.record(comp), qc_record, warnings)
    if out is not None:
        check_writable_dir(out)
        # One transaction, as run's: every file staged, then switched in with the JSON last (a kill leaves
        # the previous result whole, or no result; never a new PNG beside an old JSON). Files of an earlier
        # result that this one does not write (run's mask, which may be the mask measured here) are kept.
        targets = [f.name for f in files.values()]
        with outputs.scan_lock(out, name), outputs.Transaction(out, name, targets, True, prune=False) as txn:
            with timer("write"):
                rec.mask["compartments"] = masks.write_compartments(
                    {k: txn.path(files[k].name) for k in ("cort", "trab")},
                    None if comp is None else comp.labels,
                    None if comp is None else comp.box,
                    scan.header,
                    "rle",
                    "from a given mask (vbmd-rt measure)",
                )
                png = report.png_bytes(report.montage(scan.data, mask, cal, result=rec.to_json(), compartments=comp))
                atomic_write_bytes(txn.path(files["png"].name), png, overwrite=True)
                if export:
                    nifti.export_pair(txn.staging, name, scan, mask, export)
                    if export != "mha":  # NAME.json is also the scan NIfTI's sidecar (runtime.io.nifti)
                        rec.extra.update(nifti.scan_sidecar(scan, export))
            rec.timings_s = timings(timer.seconds, STAGES, time.perf_counter() - t0, only_run=True)
            if report_html:
                extra = report.details(scan.data, mask, cal, scan.spacing_zyx)
                html = report.html_report(rec.to_json(), png, extra).encode("utf-8", "backslashreplace")
                atomic_write_bytes(txn.path(files["html"].name), html, overwrite=True)
            result = rec.to_json()
            txn.commit(result)
            return result
    rec.timings_s = timings(timer.seconds, STAGES, time.perf_counter() - t0, only_run=True)
    return rec.to_json()
