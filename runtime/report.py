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


def context_panel(img: np.ndarray, mask: np.ndarray, bb, size: int, label: str, lo: float, hi: float) -> np.ndarray:
    """The whole slice (every bone of the hand) with MC2 filled in colour and boxed, so a wrong bone is
    visible at a glance; ``bb`` is MC2's (z, y, x) box."""
    step = max(1, int(np.ceil(max(img.shape) / (2 * size))))  # decimate first: a 1536² slice in a few ms
    small, m = np.asarray(img[::step, ::step]), np.asarray(mask[::step, ::step]) != 0
    rgb = cv2.cvtColor(_grey(small, lo, hi), cv2.COLOR_GRAY2BGR)
    tint = rgb.copy()
    tint[m] = (0, 140, 255)
    rgb = cv2.addWeighted(tint, 0.55, rgb, 0.45, 0)
    if bb is not None:
        p0 = (bb[2].start // step - 3, bb[1].start // step - 3)
        p1 = (bb[2].stop // step + 3, bb[1].stop // step + 3)
        cv2.rectangle(rgb, p0, p1, (0, 200, 255), max(1, rgb.shape[1] // 300))
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[: rgb.shape[0], : rgb.shape[1]] = rgb
    cv2.putText(canvas, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def montage(
    data: np.ndarray, mask: np.ndarray, calibration: Calibration | None, size: int = 320, box=None
) -> np.ndarray:
    """BGR image: the whole hand at MC2's middle slice with MC2 highlighted, then four axial slices through
    MC2 (crop around it) and a coronal view, contours drawn.

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
        km = int((zs[0] + zs[-1]) // 2)
        panels.append(context_panel(data[km], mask[km], bb, size, f"whole hand, z {km}: MC2 in orange", lo, hi))
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


D100_DEFINITION = (
    "D100 is the mean calibrated density (mg hydroxyapatite per cm³) of every voxel inside the outer "
    "(periosteal) contour of the second metacarpal, on the unfiltered image."
)


def details(
    data: np.ndarray,
    mask: np.ndarray,
    calibration: Calibration | None,
    element_size_mm,
    box=None,
    browser_slices: int = 16,
    size: int = 256,
) -> dict:
    """What the HTML report shows beyond the PNG: the density histogram inside the mask, the per-slice
    area and density profile, and axial slices for the slice browser (PNG bytes). Works in MC2's box only."""
    from vbmd_rt.runtime.io.masks import bounding_box

    bb = bounding_box(mask, box)
    out: dict = {"hist": None, "profile": [], "slices": []}
    if bb is None:
        return out
    sub_d = np.asarray(data[bb], dtype=np.float32)
    sub_m = np.asarray(mask[bb]) != 0
    values = sub_d[sub_m]
    unit = "stored value"
    if calibration is not None:
        values = values * np.float32(calibration.per_unit) + np.float32(calibration.intercept)
        unit = "mg HA/cm³"
    lo, hi = np.percentile(values, [0.5, 99.5]) if values.size else (0.0, 1.0)
    counts, edges = np.histogram(values, bins=60, range=(float(lo), float(hi) if hi > lo else float(lo) + 1))
    out["hist"] = {"counts": counts.tolist(), "edges": edges.tolist(), "unit": unit}
    px_mm2 = float(element_size_mm[0]) * float(element_size_mm[1])
    for k in range(sub_m.shape[0]):
        n = int(np.count_nonzero(sub_m[k]))
        if n:
            mean = float(sub_d[k][sub_m[k]].mean())
            if calibration is not None:
                mean = float(calibration.density(mean))
            out["profile"].append((bb[0].start + k, n * px_mm2, mean))
    wlo, whi = _window(data, calibration)
    y0, y1 = max(bb[1].start - 16, 0), min(bb[1].stop + 16, data.shape[1])
    x0, x1 = max(bb[2].start - 16, 0), min(bb[2].stop + 16, data.shape[2])
    picks = np.unique(
        np.linspace(bb[0].start, bb[0].stop - 1, min(browser_slices, bb[0].stop - bb[0].start)).astype(int)
    )
    for k in picks:
        side = max(y1 - y0, x1 - x0)
        img = np.zeros((side, side), np.float32) + wlo
        img[: y1 - y0, : x1 - x0] = np.asarray(data[k, y0:y1, x0:x1])
        m = np.zeros((side, side), np.uint8)
        m[: y1 - y0, : x1 - x0] = np.asarray(mask[k, y0:y1, x0:x1])
        out["slices"].append((int(k), png_bytes(_panel(img, m, size, f"z {k}", wlo, whi))))
    return out


def _svg_hist(h: dict) -> str:
    counts, edges = h["counts"], h["edges"]
    w, ht, pad = 520, 180, 34
    top = max(counts) or 1
    bw = (w - 2 * pad) / len(counts)
    bars = "".join(
        f'<rect x="{pad + i * bw:.1f}" y="{ht - pad - (c / top) * (ht - 2 * pad):.1f}" width="{bw * 0.9:.1f}" '
        f'height="{(c / top) * (ht - 2 * pad):.1f}" fill="#d9822b"/>'
        for i, c in enumerate(counts)
    )
    return (
        f'<svg width="{w}" height="{ht}" role="img" aria-label="density histogram inside the mask">{bars}'
        f'<line x1="{pad}" y1="{ht - pad}" x2="{w - pad}" y2="{ht - pad}" stroke="#333"/>'
        f'<text x="{pad}" y="{ht - 12}" font-size="11">{edges[0]:.0f}</text>'
        f'<text x="{w - pad}" y="{ht - 12}" font-size="11" text-anchor="end">{edges[-1]:.0f}</text>'
        f'<text x="{w / 2}" y="{ht - 4}" font-size="11" text-anchor="middle">{html.escape(h["unit"])} (voxels inside MC2)</text>'
        "</svg>"
    )


def _svg_profile(profile: list, which: int, label: str, colour: str) -> str:
    w, ht, pad = 520, 160, 40
    z = [p[0] for p in profile]
    v = [p[which] for p in profile]
    z0, z1 = min(z), max(z) if max(z) > min(z) else min(z) + 1
    v0, v1 = min(v), max(v) if max(v) > min(v) else min(v) + 1
    pts = " ".join(
        f"{pad + (a - z0) / (z1 - z0) * (w - 2 * pad):.1f},{ht - pad - (b - v0) / (v1 - v0) * (ht - 2 * pad):.1f}"
        for a, b in zip(z, v, strict=True)
    )
    return (
        f'<svg width="{w}" height="{ht}" role="img" aria-label="{html.escape(label)} per slice">'
        f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
        f'<line x1="{pad}" y1="{ht - pad}" x2="{w - pad}" y2="{ht - pad}" stroke="#333"/>'
        f'<text x="{pad}" y="{ht - 24}" font-size="11">z {z0}</text>'
        f'<text x="{w - pad}" y="{ht - 24}" font-size="11" text-anchor="end">z {z1}</text>'
        f'<text x="4" y="{pad - 6}" font-size="11">{v1:.0f}</text><text x="4" y="{ht - pad}" font-size="11">{v0:.0f}</text>'
        f'<text x="{w / 2}" y="{ht - 6}" font-size="11" text-anchor="middle">{html.escape(label)} per slice</text>'
        "</svg>"
    )


def _qc_banner(qc) -> str:
    if not isinstance(qc, dict) or qc.get("status") not in ("pass", "review"):
        return ""
    if qc["status"] == "pass":
        return '<div class="qc pass">QC: pass</div>'
    reasons = "".join(f"<li>{html.escape(str(r))}</li>" for r in qc.get("reasons") or [])
    return f'<div class="qc review">QC: review before use<ul>{reasons}</ul></div>'


def html_report(result: dict, png: bytes, extra: dict | None = None) -> str:
    """A self-contained HTML page (no network): a QC banner, the picture, D100 defined, the measurements,
    calibration, version and scan date; with ``extra`` (``details``) the density histogram, the per-slice
    profile and a slice browser; then timings, warnings and the JSON."""

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
    cal = result.get("calibration")
    rows += [
        row(
            "Calibration",
            "none in the header (density not available)"
            if not cal
            else f"{cal['mg_ha_cm3_per_unit']:.6g} mg HA/cm³ per stored unit {cal['intercept']:+.6g} "
            f"(slope {cal['slope']:g}, Mu_Scaling {cal['mu_scaling']:g})",
        ),
        row("Scan date", result.get("scan", {}).get("date") or "not in the header"),
        row("vbmd-rt version", result.get("vbmd_rt_version") or "?"),
    ]
    charts = ""
    browser = ""
    if extra and extra.get("hist"):
        charts = (
            "<h2>Inside the mask</h2>"
            + _svg_hist(extra["hist"])
            + _svg_profile(extra["profile"], 1, "area (mm²)", "#2b6cd9")
            + _svg_profile(extra["profile"], 2, "mean density (mg HA/cm³)" if cal else "mean stored value", "#d9822b")
        )
    if extra and extra.get("slices"):
        imgs = "".join(
            f'<img class="sl" data-i="{i}" alt="z {k}" src="data:image/png;base64,{base64.b64encode(b).decode()}"'
            f"{'' if i == 0 else ' hidden'}>"
            for i, (k, b) in enumerate(extra["slices"])
        )
        n = len(extra["slices"])
        browser = (
            f'<h2>Slices</h2><input type="range" min="0" max="{n - 1}" value="0" id="zs" aria-label="slice">'
            f"<div>{imgs}</div><script>document.getElementById('zs').oninput=function(e){{"
            "document.querySelectorAll('img.sl').forEach(function(im){im.hidden=im.dataset.i!==e.target.value;});};"
            "</script>"
        )
    timing = "".join(row(k, f"{v:.2f} s") for k, v in result["timings_s"].items())
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in result.get("warnings", [])) or "<li>none</li>"
    img = base64.b64encode(png).decode()
    name = html.escape(result["scan"]["file"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vbmd-rt: {name}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1700px}}table{{border-collapse:collapse}}
th,td{{text-align:left;padding:.2em 1em;border-bottom:1px solid #ddd}}img{{max-width:100%}}
.note{{color:#664;font-size:.9em}}.qc{{padding:.6em 1em;margin:.5em 0;font-weight:600;border-radius:4px}}
.pass{{background:#d8f0d8;color:#1d5e1d}}.review{{background:#fbe3b5;color:#6b4300}}svg{{display:block;margin:.5em 0}}
</style></head><body>
<h1>MC2 vBMD: {name}</h1>
{_qc_banner(result.get("qc"))}
<img alt="the whole hand with MC2 highlighted, axial slices and a coronal view with the MC2 contour" src="data:image/png;base64,{img}">
<h2>Result</h2><p>{html.escape(D100_DEFINITION)}</p><table>{"".join(rows)}</table>
{charts}
{browser}
<h2>Warnings</h2><ul>{warnings}</ul>
<h2>Timings</h2><table>{timing}</table>
<p class="note">{html.escape(result["model"].get("intended_use") or "")}</p>
<details><summary>JSON</summary><pre>{html.escape(json.dumps(result, indent=2))}</pre></details>
</body></html>
"""
