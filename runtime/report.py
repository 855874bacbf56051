"""Pictures and reports of a result: the PNG montage (axial slices with the contour, a coronal view)
and the self-contained HTML page. No patient fields of the processing log ever appear in them.
"""

from __future__ import annotations

import base64
import html
import json
import math

import cv2
import numpy as np

from vbmd_rt.runtime import qc as qc_rules
from vbmd_rt.runtime.io.calibration import Calibration, to_density
from vbmd_rt.runtime.io.naming import CORT_SUFFIX, TRAB_SUFFIX


def _grey(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((img.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1e-6)), 0, 255).astype(np.uint8)


def _window(data: np.ndarray, calibration: Calibration | None) -> tuple[float, float]:
    """Display window: -400..1400 mg HA/cm³ when calibrated, else robust percentiles of the raw values."""
    if calibration is not None:
        return calibration.stored(-400.0), calibration.stored(1400.0)
    k = data.shape[0] // 2
    lo, hi = np.percentile(np.asarray(data[k]), [1, 99.9])
    return float(lo), float(hi)


_FONT = cv2.FONT_HERSHEY_SIMPLEX
_ORANGE, _WHITE = (0, 200, 255), (255, 255, 255)
# The compartments on the close-ups (BGR): cortex magenta, trabecular region green, blended over the grey.
_CORTEX, _TRABECULAR = (200, 60, 230), (90, 200, 60)


def _ascii(text: str) -> str:
    """What OpenCV's Hershey fonts can draw: printable ASCII, at most 200 characters (others become ``?``;
    OpenCV can crash on what it cannot encode)."""
    return "".join(c if " " <= c <= "~" else "?" for c in str(text)[:200])


def _text(img: np.ndarray, text: str, org, scale: float = 0.5, colour=_WHITE, thick: int = 1) -> None:
    """Text with a dark outline, readable on bone and on background alike. OpenCV's fonts are ASCII: other
    characters (a file name's, µ, ³) are shown as ``?``, and a line is cut to what a picture can hold."""
    text = _ascii(text)
    x, y = org
    for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1), (1, 1)):  # the same glyphs shifted: a thicker stroke
        cv2.putText(img, text, (x + dx, y + dy), _FONT, scale, (0, 0, 0), thick, cv2.LINE_AA)  # widens them
    cv2.putText(img, text, org, _FONT, scale, colour, thick, cv2.LINE_AA)


def _scale_bar(img: np.ndarray, px_per_mm: float | None) -> None:
    """A white bar of a round length (1-50 mm, at most a third of the panel) at the panel's bottom left."""
    if not px_per_mm or not np.isfinite(px_per_mm) or px_per_mm <= 0:
        return
    w = img.shape[1]
    mm = next((v for v in (50, 20, 10, 5, 2, 1) if v * px_per_mm <= w / 3), None)
    if mm is None:
        return
    length = int(round(mm * px_per_mm))
    y = img.shape[0] - 10
    cv2.rectangle(img, (8, y - 4), (8 + length, y), (0, 0, 0), -1)
    cv2.rectangle(img, (9, y - 3), (7 + length, y - 1), _WHITE, -1)
    _text(img, f"{mm} mm", (8, y - 8), 0.4)


def _panel(
    img: np.ndarray,
    mask: np.ndarray,
    size: int,
    label: str,
    lo: float,
    hi: float,
    mm_per_col: float | None = None,
    corner: str = "",
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """One close-up, resized to ``size``: contour in orange, ``label`` at the top, a scale bar from
    ``mm_per_col`` (mm per column of ``img``) and ``corner`` (orientation) at the bottom right; with
    ``labels`` (runtime.compartments: 1 cortex, 2 trabecular) the compartments tinted in two colours."""
    rgb = cv2.cvtColor(_grey(img, lo, hi), cv2.COLOR_GRAY2BGR)
    if labels is not None and labels.any():
        tint = rgb.copy()
        tint[labels == 1] = _CORTEX
        tint[labels == 2] = _TRABECULAR
        rgb = cv2.addWeighted(tint, 0.4, rgb, 0.6, 0)
    contours, _ = cv2.findContours((mask != 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, _ORANGE, max(1, img.shape[1] // 400))
    cols = img.shape[1]
    rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_NEAREST)
    _text(rgb, label, (6, 18))
    _scale_bar(rgb, size / (cols * mm_per_col) if mm_per_col else None)
    if corner:
        (tw, _), _ = cv2.getTextSize(corner, _FONT, 0.4, 1)
        _text(rgb, corner, (size - tw - 6, size - 8), 0.4)
    return rgb


def context_panel(
    img: np.ndarray,
    mask: np.ndarray,
    bb,
    size: int,
    label: str,
    lo: float,
    hi: float,
    mm_per_px: float | None = None,
    names: list | None = None,
) -> np.ndarray:
    """The whole slice (every bone of the hand) with the measured bone filled in colour and boxed, so a
    wrong bone is visible at a glance; ``bb`` is its (z, y, x) box, ``mm_per_px`` the voxel size in-plane,
    ``names`` [(name, native y, native x)...] labels the bones the identification stage named."""
    step = max(1, int(np.ceil(max(img.shape) / (2 * size))))  # decimate first: a 1536² slice in a few ms
    small, m = np.asarray(img[::step, ::step]), np.asarray(mask[::step, ::step]) != 0
    rgb = cv2.cvtColor(_grey(small, lo, hi), cv2.COLOR_GRAY2BGR)
    tint = rgb.copy()
    tint[m] = (0, 140, 255)
    rgb = cv2.addWeighted(tint, 0.55, rgb, 0.45, 0)
    if bb is not None:
        p0 = (bb[2].start // step - 3, bb[1].start // step - 3)
        p1 = (bb[2].stop // step + 3, bb[1].stop // step + 3)
        cv2.rectangle(rgb, p0, p1, _ORANGE, max(1, rgb.shape[1] // 300))
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[: rgb.shape[0], : rgb.shape[1]] = rgb
    for name, y, x in names or ():
        if name:
            org = (int(x / step * scale) - 10, int(y / step * scale) + 4)
            _text(canvas, str(name), org, 0.4, _ORANGE if name == "MC2" else _WHITE)
    _text(canvas, label, (6, 18))
    _scale_bar(canvas, scale / (step * mm_per_px) if mm_per_px else None)
    return canvas


HEADER_PX = 58


def _turned(result: dict | None) -> bool:
    """Whether the scan's slices run from the fingers to the wrist (``stack``: the identity's in ``run``'s
    result, QC's in ``measure``'s): its z 0 is the distal end."""
    result = result or {}
    stack = ((result.get("identity") or {}).get("stack")) or ((result.get("qc") or {}).get("stack")) or {}
    return bool(stack.get("turned"))


def _header(width: int, result: dict) -> np.ndarray:
    """The band above the pictures: scan name, D100, QC status and its first reason, voxel size, side,
    and how the pictures are oriented, so that the PNG alone tells pass from review."""
    band = np.full((HEADER_PX, width, 3), 32, np.uint8)
    scan = result.get("scan") or {}
    raw_qc = result.get("qc")
    qc: dict = raw_qc if isinstance(raw_qc, dict) else {}
    status = qc.get("status") or "n/a"
    reasons = qc.get("reasons") or []
    d100 = result.get("d100_mg_ha_cm3")
    el = scan.get("element_size_mm") or []
    line1 = f"{scan.get('file', '?')}   D100 {'n/a' if d100 is None else f'{d100:.1f}'} mg HA/cm3"
    _text(band, line1, (10, 24), 0.65, _WHITE, 2)
    (tw, _), _ = cv2.getTextSize(_ascii(line1), _FONT, 0.65, 2)
    colour = (80, 200, 80) if status == "pass" else (40, 150, 255)
    verdict = f"QC: {status.upper()}" + (f" - {reasons[0]}" if status == "review" and reasons else "")
    if status == "review" and len(reasons) > 1:
        verdict += f" (+{len(reasons) - 1} more)"
    _text(band, verdict, (tw + 40, 24), 0.65, colour, 2)
    facts = [
        f"voxel {el[0]:.4g} mm" if el else "",
        f"{result['side']} hand" if result.get("side") else "",
        "axial: x right, y down, as stored; z 0 = "
        + ("distal end of the stack (written from the fingers)" if _turned(result) else "proximal end of the stack"),
        "coronal: distal up",
        "contour / fill in orange: the measured bone"
        + ("; cortex magenta, trabecular green" if result.get("compartments") else ""),
    ]
    _text(band, "   ".join(f for f in facts if f), (10, 48), 0.45)
    return band


def montage(
    data: np.ndarray,
    mask: np.ndarray,
    calibration: Calibration | None,
    size: int = 320,
    box=None,
    result: dict | None = None,
    element_size_mm=None,
    compartments=None,
) -> np.ndarray:
    """BGR image: the whole slice at the bone's middle with the measured bone highlighted, then four axial
    slices through it (crop around it) and a coronal view, contours drawn, each with a scale bar. With
    ``result`` (the result JSON), a band on top says what it is: scan name, D100, QC status and the first
    reason, voxel size, side and orientation.

    ``box`` (z0, z1, y0, y1, x0, x1), where given, bounds the mask's non-zero voxels (saves a pass over
    a full-size volume); ``element_size_mm`` (x, y, z; default: the result's) sizes the scale bars;
    ``compartments`` (``runtime.compartments.Compartments``) tints cortex and trabecular region on the close-ups."""
    from vbmd_rt.runtime.io.masks import bounding_box

    if element_size_mm is None and result is not None:
        element_size_mm = (result.get("scan") or {}).get("element_size_mm")
    ex = float(element_size_mm[0]) if element_size_mm else None
    lo, hi = _window(data, calibration)
    bb = bounding_box(mask, box)
    panels = []
    if bb is not None:
        zs = np.array([bb[0].start, bb[0].stop - 1])
        ys = np.array([bb[1].start, bb[1].stop - 1])
        xs = np.array([bb[2].start, bb[2].stop - 1])
        km = int((zs[0] + zs[-1]) // 2)
        ident = (result or {}).get("identity") or {}
        names = [(c.get("name"), *c["native_yx"]) for c in ident.get("candidates", []) if "native_yx" in c]
        panels.append(
            context_panel(data[km], mask[km], bb, size, f"whole slice z {km}: bone measured", lo, hi, ex, names)
        )
        cy, cx = (ys[0] + ys[-1]) // 2, (xs[0] + xs[-1]) // 2
        half = int(max(ys[-1] - ys[0], xs[-1] - xs[0]) * 0.9) + 8
        y0, y1 = max(cy - half, 0), min(cy + half, data.shape[1])
        x0, x1 = max(cx - half, 0), min(cx + half, data.shape[2])
        for frac in (0.1, 0.4, 0.7, 0.95):
            k = int(zs[0] + frac * (zs[-1] - zs[0]))
            panels.append(
                _panel(
                    np.asarray(data[k, y0:y1, x0:x1]),
                    mask[k, y0:y1, x0:x1],
                    size,
                    f"axial z {k}",
                    lo,
                    hi,
                    ex,
                    "x>  yv",
                    _labels(compartments, (k, k + 1), (y0, y1), (x0, x1), data.shape)[0],
                )
            )
        cor_img = np.asarray(data[:, cy, x0:x1])
        cor_mask = mask[:, cy, x0:x1]
        cor_lab = _labels(compartments, (0, data.shape[0]), (cy, cy + 1), (x0, x1), data.shape)[:, 0]
        up = slice(None) if _turned(result) else slice(None, None, -1)  # distal up: z 0 is distal where turned
        panels.append(
            _panel(cor_img[up], cor_mask[up], size, f"coronal y {cy}", lo, hi, ex, "distal ^  x>", cor_lab[up])
        )
    else:
        k = data.shape[0] // 2
        panels.append(_panel(np.asarray(data[k]), mask[k], size, f"z {k}: no MC2 found", lo, hi, ex))
    image = np.concatenate(panels, axis=1)
    if result is not None:
        image = np.concatenate([_header(image.shape[1], result), image], axis=0)
    return image


def _labels(comp, zr, yr, xr, shape) -> np.ndarray:
    """The compartment labels of the scan region z/y/x ranges (zeros outside their box; all zeros without)."""
    out = np.zeros((zr[1] - zr[0], yr[1] - yr[0], xr[1] - xr[0]), np.uint8)
    if comp is None or comp.box is None:
        return out
    src, dst = [], []
    for (a, b), s in zip((zr, yr, xr), comp.box, strict=True):
        lo, hi = max(a, s.start), min(b, s.stop)
        if hi <= lo:
            return out
        src.append(slice(lo - s.start, hi - s.start))
        dst.append(slice(lo - a, hi - a))
    out[tuple(dst)] = comp.labels[tuple(src)]
    return out


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
    spacing_zyx,
    box=None,
    browser_slices: int = 16,
    size: int = 256,
) -> dict:
    """What the HTML report shows beyond the PNG: the density histogram inside the mask, the per-slice
    area and density profile, and axial slices for the slice browser (PNG bytes). Works in MC2's box only.
    ``spacing_zyx``: the voxel size in mm, (z, y, x) as the arrays."""
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
        values = to_density(values, calibration)  # the scan's density equation (runtime.io.calibration)
        unit = "mg HA/cm³"
    lo, hi = np.percentile(values, [0.5, 99.5]) if values.size else (0.0, 1.0)
    counts, edges = np.histogram(values, bins=60, range=(float(lo), float(hi) if hi > lo else float(lo) + 1))
    out["hist"] = {"counts": counts.tolist(), "edges": edges.tolist(), "unit": unit}
    px_mm2 = float(spacing_zyx[1]) * float(spacing_zyx[2])
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


def _svg_hist(h: dict, d100: float | None = None) -> str:
    """Histogram of the densities inside the mask, with a y-axis (voxels) and D100 marked (their mean)."""
    counts, edges = h["counts"], h["edges"]
    w, ht, pad, left = 560, 200, 34, 58
    top = max(counts) or 1
    bw = (w - left - pad) / len(counts)
    inner = ht - 2 * pad
    bars = "".join(
        f'<rect x="{left + i * bw:.1f}" y="{ht - pad - (c / top) * inner:.1f}" width="{bw * 0.9:.1f}" '
        f'height="{(c / top) * inner:.1f}" fill="#d9822b"/>'
        for i, c in enumerate(counts)
    )
    yaxis = (
        f'<line x1="{left}" y1="{pad}" x2="{left}" y2="{ht - pad}" stroke="#333"/>'
        + "".join(
            f'<line x1="{left - 4}" y1="{ht - pad - f * inner:.1f}" x2="{left}" y2="{ht - pad - f * inner:.1f}" '
            f'stroke="#333"/><text x="{left - 6}" y="{ht - pad - f * inner + 4:.1f}" font-size="11" '
            f'text-anchor="end">{round(top * f)}</text>'
            for f in (0.0, 0.5, 1.0)
        )
        + f'<text x="12" y="{ht / 2}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {ht / 2})">voxels</text>'
    )
    mark = ""
    if d100 is not None and edges[-1] > edges[0]:
        f = min(max((d100 - edges[0]) / (edges[-1] - edges[0]), 0.0), 1.0)
        x = left + f * (w - left - pad)
        mark = (
            f'<line class="d100" x1="{x:.1f}" y1="{pad - 8}" x2="{x:.1f}" y2="{ht - pad}" stroke="#1d3f8f" '
            f'stroke-width="2" stroke-dasharray="5 3"/>'
            f'<text x="{x + 4:.1f}" y="{pad - 10}" font-size="12" fill="#1d3f8f">D100 {d100:.1f}</text>'
        )
    return (
        f'<svg width="{w}" height="{ht}" role="img" aria-label="density histogram inside the mask">{bars}{yaxis}'
        f'<line x1="{left}" y1="{ht - pad}" x2="{w - pad}" y2="{ht - pad}" stroke="#333"/>{mark}'
        f'<text x="{left}" y="{ht - 18}" font-size="11">{edges[0]:.0f}</text>'
        f'<text x="{w - pad}" y="{ht - 18}" font-size="11" text-anchor="end">{edges[-1]:.0f}</text>'
        f'<text x="{(left + w - pad) / 2}" y="{ht - 4}" font-size="11" text-anchor="middle">'
        f"{html.escape(h['unit'])} (voxels inside MC2)</text>"
        "</svg>"
    )


def _svg_profile(profile: list, which: int, label: str, colour: str, turned: bool = False) -> str:
    """A per-slice profile; its value axis starts at 0 (from a non-zero floor a small dip looks
    dramatic), z runs from z 0 of the stack: the proximal end, or the distal one where ``turned`` (a stack
    written from the fingers to the wrist)."""
    w, ht, pad, left = 560, 170, 40, 58
    z = [p[0] for p in profile]
    v = [p[which] for p in profile]
    z0, z1 = min(z), max(z) if max(z) > min(z) else min(z) + 1
    v0 = min(0.0, min(v))
    v1 = max(v) * 1.05 if max(v) > v0 else v0 + 1
    pts = " ".join(
        f"{left + (a - z0) / (z1 - z0) * (w - left - pad):.1f},{ht - pad - (b - v0) / (v1 - v0) * (ht - 2 * pad):.1f}"
        for a, b in zip(z, v, strict=True)
    )
    ticks = "".join(
        f'<text x="{left - 6}" y="{ht - pad - f * (ht - 2 * pad) + 4:.1f}" font-size="11" text-anchor="end">'
        f"{v0 + f * (v1 - v0):.0f}</text>"
        for f in (0.0, 0.5, 1.0)
    )
    ends = ("distal", "proximal") if turned else ("proximal", "distal")
    return (
        f'<svg width="{w}" height="{ht}" role="img" aria-label="{html.escape(label)} per slice">'
        f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
        f'<line x1="{left}" y1="{pad}" x2="{left}" y2="{ht - pad}" stroke="#333"/>{ticks}'
        f'<line x1="{left}" y1="{ht - pad}" x2="{w - pad}" y2="{ht - pad}" stroke="#333"/>'
        f'<text x="{left}" y="{ht - 24}" font-size="11">z {z0} ({ends[0]})</text>'
        f'<text x="{w - pad}" y="{ht - 24}" font-size="11" text-anchor="end">z {z1} ({ends[1]})</text>'
        f'<text x="{(left + w - pad) / 2}" y="{ht - 6}" font-size="11" text-anchor="middle">'
        f"{html.escape(label)} per slice</text>"
        "</svg>"
    )


def calibration_text(cal: dict | None, plain: bool = False) -> str:
    """The density equation in words, with its intercept labelled (the HTML report and ``vbmd-rt info``):
    ``cal`` has ``mg_ha_cm3_per_unit``, ``intercept``, ``slope`` and ``mu_scaling``; ``plain``: ASCII."""
    if not cal:
        return "none in the header (density not available)"
    m, b = cal["mg_ha_cm3_per_unit"], cal["intercept"]
    unit, times = ("mg HA/cm3", "x") if plain else ("mg HA/cm³", "×")
    return (
        f"{unit} = {m:.6g} {times} stored value {'-' if b < 0 else '+'} {abs(b):.6g}: slope {m:.6g} {unit} per "
        f"stored unit (Density: slope {cal['slope']:g} / Mu_Scaling {cal['mu_scaling']:g}), "
        f"intercept {b:+.6g} {unit}"
    )


# What each QC check is, in the order a reader checks them: (group, key, words, how the limit reads).
_CHECKS = (
    ("identity", "margin", "identity margin (log-odds of MC2 over the next bone)", "identity_margin", ">="),
    (
        "agreement",
        "dice_with_identified_region",
        "agreement with the identified bone's region (Dice)",
        "region_dice",
        ">=",
    ),
    (
        "second_reading",
        "dice_with_network",
        "agreement with the bundled network on the same bone (Dice)",
        "reading_dice",
        ">=",
    ),
    (
        "second_reading",
        "d100_difference_mg_ha_cm3",
        "D100 minus the bundled network's on the same bone (mg HA/cm³)",
        "reading_d100_mg",
        "±",
    ),
    ("baseline", "dice", "agreement with the classical baseline on the same bone (Dice)", "baseline_dice", ">="),
    ("baseline", "d100_difference_mg_ha_cm3", "D100 minus the baseline's (mg HA/cm³)", "baseline_d100_mg", "±"),
    ("baseline", "row_end", "the bone is at an end of the metacarpal row (MC2 or MC5)", None, "yes"),
    ("confidence", "uncertain_fraction", "share of uncertain voxels at the boundary", "uncertain_fraction", "<="),
    ("shape", "pieces_fraction", "share of slices where the mask falls apart", "pieces_fraction", "<="),
    ("shape", "shafts", "shafts side by side in the mask's first 3 mm", None, "1"),
    ("shape", "gap_slices", "slices skipped inside the mask", None, "0"),
    ("shape", "solidity", "solidity of the cross-sections", "solidity", ">="),
    ("shape", "area_jump", "largest area jump between slices", "area_jump", "<="),
    (
        "shape",
        "end_fraction",
        "the last slice's share of the largest cross-section (a head ends in a dome)",
        "end_fraction",
        "<=",
    ),
    (
        "shape",
        "end_taper_mm",
        "dome length: from the last slice that holds 90 % of the largest cross-section to the end (mm)",
        "end_taper_mm",
        ">=",
    ),
    (
        "shape",
        "end_halving_mm",
        "dome halving: from the last slice that holds 90 % of the largest cross-section to the last before one"
        " under 50 % (mm)",
        "end_halving_mm",
        ">=",
    ),
    ("shape", "touches_edge", "the mask touches the image's edge", None, "no"),
    ("shape", "length_mm", "MC2 length (mm)", "length_mm", "in"),
    (None, "bone_volume_mm3", "bone volume (mm³)", "volume_mm3", "in"),
    (None, "mean_slice_area_mm2", "mean slice area (mm²)", "mean_area_mm2", "in"),
    (None, "d100_mg_ha_cm3", "D100 (mg HA/cm³)", "d100_mg", "in"),
)


def qc_checks(result: dict) -> list[tuple[str, str, str]]:
    """(check, value, limit) for every QC check the result's verdict is based on, as far as the result
    records them (a check whose value is not in the result is left out: e.g. no baseline for a given
    mask, no confidence for the classical model)."""
    raw_qc = result.get("qc")
    qc: dict = raw_qc if isinstance(raw_qc, dict) else {}
    limits = qc.get("limits") or {}
    rows = []

    def fmt(v):
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    for group, key, words, limit_key, how in _CHECKS:
        src = result if group is None else qc.get(group)
        if not isinstance(src, dict) or src.get(key) is None:
            continue
        lim = limits.get(limit_key) if limit_key else None
        if how == "in" and isinstance(lim, (list, tuple)) and len(lim) == 2:
            limit = f"{lim[0]:g} to {lim[1]:g}"
        elif how == "±" and lim is not None:
            limit = f"within ±{lim:g}"
        elif how in (">=", "<=") and lim is not None:
            limit = f"{how} {lim:g}"
        elif how in ("yes", "no", "0", "1"):
            limit = how
        else:
            continue
        rows.append((words, fmt(src[key]), limit))
    shape = qc.get("shape")
    floor = limits.get("run_on_fraction")
    if (
        isinstance(shape, dict)
        and floor is not None
        and qc_rules.run_on_asked(shape, floor, limits.get("end_fraction", math.inf))
    ):
        rows.append(
            (
                f"the mask narrows over its last 1 or 2 mm, as a head's dome does (asked where its last slice"
                f" holds {floor:.0%} or more of the largest cross-section: a phalanx's shaft does not narrow)",
                fmt(qc_rules.end_narrows(shape)),
                "yes",
            )
        )
    return rows


def _qc_banner(qc) -> str:
    if not isinstance(qc, dict) or qc.get("status") not in ("pass", "review"):
        return ""
    if qc["status"] == "pass":
        return '<div class="qc pass">QC: pass (every check below within its limit)</div>'
    reasons = "".join(f"<li>{html.escape(str(r))}</li>" for r in qc.get("reasons") or [])
    return f'<div class="qc review">QC: review before use<ul>{reasons}</ul></div>'


def compartments_table(comp: dict | None) -> str:
    """The compartments as an HTML table: one row per parameter (whole MC2, head, shaft) with its definition."""
    from vbmd_rt.runtime.compartments import DEFINITIONS, PARAMETERS

    if not comp:
        return ""

    def cell(region, k):
        v = (region or {}).get(k)
        return "n/a" if v is None else (f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}")

    head, shaft = comp.get("head"), comp.get("shaft")
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{cell(comp, k)}</td><td>{cell(head, k)}</td><td>{cell(shaft, k)}</td>"
        f"<td>{html.escape(DEFINITIONS[k])}</td></tr>"
        for k in PARAMETERS
    )
    thr = comp.get("thresholds_mg_ha_cm3") or {}
    neck = comp.get("neck_slice")
    return (
        "<h2>Compartments</h2><p>Cortex (magenta in the pictures) and trabecular region (green) inside the "
        "periosteal contour, by the dual-threshold autocontour of Buie et al. (2007) in physical units: "
        f"cortical threshold {thr.get('cortical', 'n/a')} mg HA/cm³; head and shaft split at the neck"
        f"{'' if neck is None else f' (slice {neck})'}. Masks: NAME{CORT_SUFFIX} and NAME{TRAB_SUFFIX}.</p>"
        "<table><tr><th>parameter</th><th>MC2</th><th>head</th><th>shaft</th><th>definition</th></tr>"
        f"{rows}</table>"
    )


def html_report(result: dict, png: bytes, extra: dict | None = None) -> str:
    """A self-contained HTML page (no network): a QC banner, the model's intended use (prominent: the
    bundled model is trained on phantoms only), the picture, D100 defined, the measurements, calibration
    (intercept labelled), voxel size, version and scan date, the QC checks a verdict is based on; with
    ``extra`` (``details``) the density histogram (D100 marked, a y-axis), the per-slice profiles (from 0,
    proximal to distal) and a slice browser; then warnings, timings (folded) and the JSON."""

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
    el = (result.get("scan") or {}).get("element_size_mm")
    rows += [
        row("Calibration", calibration_text(cal)),
        row("Voxel size (mm)", " x ".join(f"{float(v):.4g}" for v in el) if el else "not recorded"),
        row("Scan date", result.get("scan", {}).get("date") or "not in the header"),
        row("vbmd-rt version", result.get("vbmd_rt_version") or "?"),
    ]
    checks = qc_checks(result)
    check_table = (
        "<h2>Quality checks</h2><p>The QC verdict is based on these checks (a check that did not run for this "
        "result is not listed).</p><table><tr><th>check</th><th>value</th><th>limit</th></tr>"
        + "".join(
            f"<tr><td>{html.escape(c)}</td><td>{html.escape(v)}</td><td>{html.escape(lim)}</td></tr>"
            for c, v, lim in checks
        )
        + "</table>"
        if checks
        else ""
    )
    use = (result.get("model") or {}).get("intended_use") or ""
    notice = ""
    if use:
        head = "Trained on phantoms only" if "phantom" in use.lower() else "Intended use"
        notice = f'<div class="notice"><strong>{head}.</strong> {html.escape(use)}</div>'
    charts = ""
    browser = ""
    if extra and extra.get("hist"):
        charts = (
            "<h2>Inside the mask</h2>"
            + _svg_hist(extra["hist"], d100 if cal else None)
            + _svg_profile(extra["profile"], 1, "area (mm²)", "#2b6cd9", _turned(result))
            + _svg_profile(
                extra["profile"],
                2,
                "mean density (mg HA/cm³)" if cal else "mean stored value",
                "#d9822b",
                _turned(result),
            )
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
    total = result["timings_s"].get("total")
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in result.get("warnings", [])) or "<li>none</li>"
    img = base64.b64encode(png).decode()
    name = html.escape(result["scan"]["file"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vbmd-rt: {name}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1700px}}table{{border-collapse:collapse}}
th,td{{text-align:left;padding:.2em 1em;border-bottom:1px solid #ddd}}img{{max-width:100%}}
.note{{color:#664;font-size:.9em}}.qc{{padding:.6em 1em;margin:.5em 0;font-weight:600;border-radius:4px}}
.notice{{padding:.8em 1em;margin:.5em 0;border:2px solid #b7791f;background:#fff4d6;color:#5a3b00;font-size:1.05em}}
.pass{{background:#d8f0d8;color:#1d5e1d}}.review{{background:#fbe3b5;color:#6b4300}}svg{{display:block;margin:.5em 0}}
</style></head><body>
<h1>MC2 vBMD: {name}</h1>
{_qc_banner(result.get("qc"))}
{notice}
<img alt="the whole hand with MC2 highlighted, axial slices and a coronal view with the MC2 contour" src="data:image/png;base64,{img}">
<h2>Result</h2><p>{html.escape(D100_DEFINITION)}</p><table>{"".join(rows)}</table>
{compartments_table(result.get("compartments"))}
{check_table}
{charts}
{browser}
<h2>Warnings</h2><ul>{warnings}</ul>
<details><summary>Timings{"" if total is None else f" ({total:.1f} s in total)"}</summary><table>{timing}</table></details>
<details><summary>JSON</summary><pre>{html.escape(json.dumps(result, indent=2))}</pre></details>
</body></html>
"""
