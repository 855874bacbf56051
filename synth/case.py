"""One phantom case's parameters (anatomy, densities, scanner), shared by the standard generator
(``phantom``) and the domain-randomised family (``families``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from vbmd_rt.runtime.io.calibration import Calibration

# XtremeCT I calibration as in shared/aim-samples/bonelabdata_aluminum.aim.
XTREMECT_CALIBRATION = Calibration(8192.0, 1441.13599, -356.445007, 0.2464)


@dataclass
class Bone:
    """One metacarpal and its proximal phalanx, in mm (x, y in-plane; z along the scan)."""

    name: str
    x0: float
    y0: float
    dx: float  # drift of the centre per mm of z
    dy: float
    curv: float  # quadratic bow of the shaft (mm per mm²)
    shaft: tuple[float, float]  # semi-axes of the shaft
    head: tuple[float, float]  # semi-axes of the head
    angle: float  # degrees, in-plane rotation of the cross-section
    tip: float  # z of the distal end of the head dome
    dome: float  # length of the dome
    neck: float  # length of the shaft-to-head transition
    cortex_shaft: float
    cortex_head: float
    gap: float  # joint space
    phalanx: tuple[float, float]  # semi-axes of the phalanx base
    cup: float  # depth of the phalanx base's concavity
    shape_shaft: dict | None = None  # cross-section model (families.outline); None: an ellipse
    shape_head: dict | None = None
    porosity: float = 0.0  # fraction of the cortex that is pores


@dataclass
class CaseParams:
    seed: int
    size: str
    voxel_mm: float
    nxy: int
    slices: int
    side: str
    motion_grade: int
    rings: bool
    osteopenia: bool
    cortex_density: float
    tissue_density: float  # of trabecular bone at this resolution
    trab_fraction_head: float
    trab_fraction_shaft: float
    trab_apparent_head: float
    marrow_density: float
    soft_density: float
    noise_sd: float
    psf_sigma_vox: float
    psf_sigma_z_vox: float
    cupping: float
    hand: tuple[float, float, float, float, float]  # cx, cy, a, b, angle
    bones: list[Bone] = field(default_factory=list)
    erosions: list[dict] = field(default_factory=list)
    family: dict = field(default_factory=lambda: {"name": "standard"})
    calibration: tuple[float, float, float, float] | None = None  # mu_scaling, slope, intercept, mu_water
    scanner: str = "XtremeCT"
    extras: dict = field(default_factory=dict)  # fat, tendons, sesamoids (the random family)

    @property
    def cal(self) -> Calibration:
        return XTREMECT_CALIBRATION if self.calibration is None else Calibration(*self.calibration)

    def to_dict(self) -> dict:
        return asdict(self)


def erosion(rng: np.random.Generator, b: Bone, reach: float = 1.8, radius_mm: float = 2.4) -> dict:
    """A cortical erosion of bone ``b``: a pit at a random angle, between 0.3 and ``reach`` dome lengths
    from its tip, 0.8 to ``radius_mm`` in radius."""
    return {
        "bone": b.name,
        "z_mm": float(b.tip - b.dome * rng.uniform(0.3, reach)),
        "angle_deg": float(rng.uniform(0, 360)),
        "radius_mm": float(rng.uniform(0.8, radius_mm)),
    }
