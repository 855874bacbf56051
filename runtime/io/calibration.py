"""Density calibration: stored AIM values <-> mg HA/cm³ (and HU), from the scan's header.

For a stored value ``v`` (Scanco, documented in the processing log)::

    BMD [mg HA/cm³] = v * slope / Mu_Scaling + intercept
    mu  [1/cm]      = v / Mu_Scaling
    HU              = v * 1000 / (Mu_Scaling * mu_water) - 1000

Calibration differs per scanner and date, so it is always read from the file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from vbmd_rt.runtime.errors import CalibrationError

__all__ = ["Calibration", "calibration_from_log", "implausible", "to_density", "from_density", "PHYSICAL"]

# What a physical Scanco calibration can be (XtremeCT I: Mu_Scaling 8192, slope 1441.1 mg HA/cm³ per 1/cm,
# intercept -356.4 mg HA/cm³, mu water 0.2464 1/cm; XtremeCT II and the µCTs: slopes ~1000-3000, intercepts
# ~-100 to -800, mu water 0.2-0.9 1/cm by energy), with wide margins. Outside them the header lies, and a D100
# computed from it (1e39, or negative) would be nonsense: the scan is refused, naming the field.
PHYSICAL = {
    "Mu_Scaling": (1.0, 1e6),
    "Density: slope": (10.0, 1e5),  # mg HA/cm³ per (1/cm); never negative or zero
    "Density: intercept": (-1e4, 1e4),  # mg HA/cm³
    "HU: mu water": (0.01, 10.0),  # 1/cm
}


@dataclass(frozen=True)
class Calibration:
    mu_scaling: float
    slope: float  # mg HA/cm³ per (1/cm) of linear attenuation
    intercept: float  # mg HA/cm³
    mu_water: float | None = None  # 1/cm
    unit: str = "mg HA/ccm"

    @property
    def per_unit(self) -> float:
        """mg HA/cm³ per stored unit (the density equation's slope)."""
        return self.slope / self.mu_scaling

    def density_equation(self) -> tuple[float, float]:
        """``(mg HA/cm³ per stored unit, intercept)``: ``density = v * m + b``."""
        return (self.per_unit, self.intercept)

    def density(self, stored: float) -> float:
        """mg HA/cm³ of one stored value (the density equation; arrays: ``to_density``)."""
        return stored * self.per_unit + self.intercept

    def stored(self, mg_ha_cm3: float) -> float:
        """The stored value of a density (the inverse equation, unrounded; arrays: ``from_density``)."""
        return (mg_ha_cm3 - self.intercept) / self.per_unit

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mg_ha_cm3_per_unit"] = self.per_unit
        return d


def calibration_from_log(parsed: dict[str, object]) -> Calibration | None:
    """Calibration from a parsed processing log, or None if any density field is missing."""
    try:
        mu_scaling = float(parsed["Mu_Scaling"])  # type: ignore[arg-type]
        slope = float(parsed["Density: slope"])  # type: ignore[arg-type]
        intercept = float(parsed["Density: intercept"])  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError):
        return None
    if not np.isfinite([mu_scaling, slope, intercept]).all() or mu_scaling <= 0 or slope == 0:
        return None
    mu_water = parsed.get("HU: mu water")
    mu_water = float(mu_water) if isinstance(mu_water, (int, float)) and mu_water > 0 else None
    unit = parsed.get("Density: unit")
    return Calibration(mu_scaling, slope, intercept, mu_water, unit if isinstance(unit, str) else "mg HA/ccm")


def implausible(cal: Calibration) -> str | None:
    """Why ``cal`` cannot be a physical calibration (the field and its value), or None when it can."""
    values = {
        "Mu_Scaling": cal.mu_scaling,
        "Density: slope": cal.slope,
        "Density: intercept": cal.intercept,
        "HU: mu water": cal.mu_water,
    }
    for key, v in values.items():
        if v is None:
            continue
        lo, hi = PHYSICAL[key]
        if not (np.isfinite(v) and lo <= v <= hi):
            return f"{key} {v:.6g} is outside the physical range {lo:g} to {hi:g}"
    return None


def _require(cal: Calibration | None, path=None) -> Calibration:
    if cal is None:
        raise CalibrationError(
            path,
            "no density calibration in the header (Mu_Scaling, Density: slope/intercept)",
            "export the scan from the scanner with its calibration, or pass a calibrated AIM",
        )
    return cal


def to_density(values: np.ndarray, cal: Calibration | None, path=None) -> np.ndarray:
    """Stored values -> float32 mg HA/cm³. Raises CalibrationError if ``cal`` is None."""
    cal = _require(cal, path)
    m, b = cal.density_equation()
    return (np.asarray(values, dtype=np.float32) * np.float32(m) + np.float32(b)).astype(np.float32, copy=False)


def from_density(density: np.ndarray, cal: Calibration | None, path=None, dtype=np.int16) -> np.ndarray:
    """mg HA/cm³ -> stored values (rounded, clipped to ``dtype``)."""
    cal = _require(cal, path)
    m, b = cal.density_equation()
    v = np.rint((np.asarray(density, dtype=np.float64) - b) / m)
    info = np.iinfo(dtype)
    return np.clip(v, info.min, info.max).astype(dtype)
