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

__all__ = ["Calibration", "calibration_from_log", "to_density", "from_density"]


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
