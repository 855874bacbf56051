"""Pictures and reports of a result: the PNG montage (axial slices with the contour, a coronal view)
and the self-contained HTML page. No patient fields of the processing log ever appear in them.
"""

from __future__ import annotations

import base64
import html
import json

import cv2
import numpy as np

from vbmd_rt.runtime.io.calibration import Calibration


def _grey(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((img.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1e-6)), 0, 255).astype(np.uint8)


def _window(data: np.ndarray, calibration: Calibration | None) -> tuple[float, float]:
    """Display window: -400..1400 mg HA/cm³ when calibrated, else robust percentiles of the raw values."""
    if calibration is not None:
        return calibration.stored(-400.0), calibration.stored(1400.0)
    k = data.shape[0] // 2
    lo, hi = np.percentile(np.asarray(data[k]), [1, 99.9])
    return float(lo), float(hi)


def _panel(img: np.ndarray, mask: np.ndarray, size: int, label: str, lo: float, hi: float) -> np.ndarray:
    rgb = cv2.cvtColor(_grey(img, lo, hi), cv2.COLOR_GRAY2BGR)
    contours, _ = cv2.findContours((mask != 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, (0, 200, 255), max(1, img.shape[1] // 400))
    rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_NEAREST)
    cv2.putText(rgb, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return rgb


def montage(
    data: np.ndarray, mask: np.ndarray, calibration: Calibration | None, size: int = 320, box=None
) -> np.ndarray:
    """BGR image: four axial slices through MC2 (crop around it) and a coronal view, contours drawn.

    ``box`` (z0, z1, y0, y1, x0, x1), where given, bounds the mask's non-zero voxels (saves a pass over
    a full-size volume)."""
    from vbmd_rt.runtime.io.masks import bounding_box

    lo, hi = _window(data, calibration)
    bb = bounding_box(mask, box)
    panels = []
    if bb is not None:
        zs = np.array([bb[0].start, bb[0].stop - 1])
        ys = np.array([bb[1].start, bb[1].stop - 1])
        xs = np.array([bb[2].start, bb[2].stop - 1])
        cy, cx = (ys[0] + ys[-1]) // 2, (xs[0] + xs[-1]) // 2
        half = int(max(ys[-1] - ys[0], xs[-1] - xs[0]) * 0.9) + 8
        y0, y1 = max(cy - half, 0), min(cy + half, data.shape[1])
        x0, x1 = max(cx - half, 0), min(cx + half, data.shape[2])
        for frac in (0.1, 0.4, 0.7, 0.95):
            k = int(zs[0] + frac * (zs[-1] - zs[0]))
            panels.append(_panel(np.asarray(data[k, y0:y1, x0:x1]), mask[k, y0:y1, x0:x1], size, f"z {k}", lo, hi))
        cor_img = np.asarray(data[:, cy, x0:x1])
        cor_mask = mask[:, cy, x0:x1]
        panels.append(_panel(cor_img[::-1], cor_mask[::-1], size, f"coronal y {cy}", lo, hi))
    else:
        k = data.shape[0] // 2
        panels.append(_panel(np.asarray(data[k]), mask[k], size, f"z {k}: no MC2 found", lo, hi))
    return np.concatenate(panels, axis=1)


def png_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def html_report(result: dict, png: bytes) -> str:
    """A self-contained HTML page: the picture (inline), the measurements, timings and warnings."""

    def row(k, v):
        return f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"

    d100 = result.get("d100_mg_ha_cm3")
    rows = [
        row("D100 (mg HA/cm³)", "not available" if d100 is None else f"{d100:.1f}"),
        row("Bone volume (mm³)", f"{result['bone_volume_mm3']:.1f}"),
        row("Mean slice area (mm²)", f"{result['mean_slice_area_mm2']:.1f}"),
        row("Slices with MC2", result["slices"]),
        row("Hand side", result.get("side") or "unknown"),
        row("Backend", result["backend"]["name"]),
        row("Model", f"{result['model']['name']} ({(result['model']['sha256'] or '')[:12]})"),
    ]
    timing = "".join(row(k, f"{v:.2f} s") for k, v in result["timings_s"].items())
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in result.get("warnings", [])) or "<li>none</li>"
    img = base64.b64encode(png).decode()
    name = html.escape(result["scan"]["file"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vbmd-rt: {name}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1700px}}table{{border-collapse:collapse}}
th,td{{text-align:left;padding:.2em 1em;border-bottom:1px solid #ddd}}img{{max-width:100%}}
.note{{color:#664;font-size:.9em}}</style></head><body>
<h1>MC2 vBMD: {name}</h1>
<img alt="axial slices and a coronal view with the MC2 contour" src="data:image/png;base64,{img}">
<h2>Result</h2><table>{"".join(rows)}</table>
<h2>Warnings</h2><ul>{warnings}</ul>
<h2>Timings</h2><table>{timing}</table>
<p class="note">{html.escape(result["model"].get("intended_use") or "")}</p>
<details><summary>JSON</summary><pre>{html.escape(json.dumps(result, indent=2))}</pre></details>
</body></html>
"""
