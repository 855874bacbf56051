"""Preview montage of phantoms (``vbmd-rt synth --preview``): representative slices with the true MC2
contour, for a person to judge realism against published HR-pQCT images."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from vbmd_rt.runtime.io.aim import read_aim
from vbmd_rt.runtime.io.atomic import atomic_write_bytes
from vbmd_rt.runtime.io.calibration import Calibration, to_density
from vbmd_rt.runtime.io.naming import GT_SUFFIX, TRUTH_SUFFIX
from vbmd_rt.synth.phantom import XTREMECT_CALIBRATION


def _grey(density: np.ndarray, lo: float = -400.0, hi: float = 1400.0) -> np.ndarray:
    return np.clip((density - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def _panel(scan_slice: np.ndarray, mask_slice: np.ndarray, size: int, label: str, cal: Calibration) -> np.ndarray:
    g = _grey(to_density(scan_slice, cal))
    interp = cv2.INTER_AREA if g.shape[0] >= size else cv2.INTER_LINEAR
    g = cv2.resize(g, (size, size), interpolation=interp)
    m = cv2.resize(mask_slice.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    rgb = cv2.cvtColor(g, cv2.COLOR_GRAY2BGR)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, (40, 40, 255), 1)
    cv2.putText(rgb, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 255), 1, cv2.LINE_AA)
    return rgb


def preview(folder: str | Path, out_png: str | Path, size: int = 256, max_rows: int = 6) -> Path:
    """Montage of representative slices of the phantoms in ``folder``.

    One row per chosen case (motion grades 1-3 and an eroded case first), columns: shaft,
    neck, head, joint (phalanx cup around the head) and a coronal view; the red line is the
    true MC2 contour.
    """
    folder = Path(folder)
    truths = [json.loads(t.read_text()) for t in sorted(folder.glob(f"*{TRUTH_SUFFIX}"))]
    if not truths:
        raise FileNotFoundError(f"no phantoms (*.truth.json) in {folder}")
    chosen: list[dict] = []
    for want in (
        {"motion_grade": 1},
        {"motion_grade": 2},
        {"motion_grade": 3},
        {"eroded": True},
        {"osteopenia": True},
        {"side": "left"},
        {"side": "right"},
    ):
        for t in truths:
            ok = all((bool(t["erosions"]) if k == "eroded" else t.get(k) == v) for k, v in want.items())
            if ok and t not in chosen:
                chosen.append(t)
                break
    for t in truths:
        if len(chosen) >= max_rows:
            break
        if t not in chosen:
            chosen.append(t)
    rows = []
    for t in chosen[:max_rows]:
        s = read_aim(folder / f"{t['name']}.AIM")
        scan, cal = s.data, s.calibration or XTREMECT_CALIBRATION
        gt = np.asarray(read_aim(folder / f"{t['name']}{GT_SUFFIX}").data) != 0
        zs = np.flatnonzero(gt.reshape(gt.shape[0], -1).any(axis=1))
        z_last = int(zs.max()) if zs.size else gt.shape[0] // 2
        z_first = int(zs.min()) if zs.size else 0
        picks = [
            ("shaft", z_first + (z_last - z_first) // 6),
            ("neck", z_first + (z_last - z_first) * 3 // 5),
            ("head", z_first + (z_last - z_first) * 7 // 8),
            ("joint", min(gt.shape[0] - 1, z_last - 1)),
        ]
        tag = f"{t['name'][-4:]} g{t['motion_grade']} {t['side'][0].upper()}{' ero' if t['erosions'] else ''}"
        panels = [_panel(np.asarray(scan[z]), gt[z], size, f"{tag} {lab} z{z}", cal) for lab, z in picks]
        y = int(np.median(np.nonzero(gt[z_first : z_last + 1])[1])) if zs.size else gt.shape[1] // 2
        # Coronal view through MC2, cropped around it and stretched to a square panel.
        xs = np.flatnonzero(gt[:, y, :].any(axis=0))
        half = max(40, gt.shape[2] // 6)
        cx = int(xs.mean()) if xs.size else gt.shape[2] // 2
        x0, x1 = max(0, cx - half), min(gt.shape[2], cx + half)
        sq = np.ascontiguousarray(np.asarray(scan[:, y, x0:x1])[::-1])
        msq = np.ascontiguousarray(gt[:, y, x0:x1][::-1])
        panels.append(_panel(sq, msq, size, f"coronal y{y}", cal))
        rows.append(np.hstack(panels))
    img = np.vstack(rows)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    atomic_write_bytes(out_png, buf.tobytes())
    return Path(out_png)
