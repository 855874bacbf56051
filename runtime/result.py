"""One scan's result: the record that ``OUT/NAME.json``, ``vbmd_rt.Result``, ``vbmd-rt measure`` and a
cohort's summary row are all made from.

``Record`` holds what a scan gave (the measures of ``measure.vbmd``, the side, the model and backend that
made the mask, the calibration, the scan's identity and fingerprint, the mask's files, the identification,
the compartments, the QC verdict, warnings and timings). ``to_json`` is the result JSON (the keys of the
contract in the architecture note, in their order), ``summary_values`` the per-result columns of a summary
row, ``from_json`` reads a result back (also one an earlier version wrote, for the summary of a resumed
cohort). ``run`` makes its record with ``of_run``, ``measure`` with ``of_given_mask``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from vbmd_rt import __version__
from vbmd_rt.runtime.io import proclog

RUN = "run"  # the mask is the model's (``vbmd-rt run``, the Python API)
GIVEN_MASK = "given-mask"  # the mask was given (``vbmd-rt measure``)
MEASURES = ("d100_mg_ha_cm3", "bone_volume_mm3", "mean_slice_area_mm2", "slices")
# What a given mask's result names as its model and backend: no network made it.
GIVEN_MASK_MODEL = {"name": "given mask", "architecture": None, "sha256": None, "intended_use": None}
GIVEN_MASK_BACKEND = {"name": GIVEN_MASK, "precision": None}


def finite(value):
    """``value`` with every float that is not finite (an unchallenged identity margin, a level with no voxels
    to read) as None: JSON has no inf or NaN, and strict readers (jq, JavaScript, Go) refuse Python's
    ``Infinity``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


@dataclass
class Record:
    """One scan's result. ``kind`` is ``run`` (its JSON has ``run_key`` and ``identity``) or ``given-mask``."""

    d100_mg_ha_cm3: float | None  # None without a density calibration
    bone_volume_mm3: float
    mean_slice_area_mm2: float
    slices: int
    side: str | None
    side_source: str
    backend: dict
    model: dict  # name, architecture, sha256, intended_use
    calibration: dict | None  # calibration_record: the density equation of the D100
    scan: dict  # scan_record and the input's fingerprint
    mask: dict  # the mask's file (or files), voxels
    compartments: dict | None  # runtime.compartments.record
    qc: dict  # status pass | review, reasons, checks
    warnings: list[str]
    timings_s: dict = field(default_factory=dict)
    kind: str = RUN
    run_key: dict | None = None  # run: what besides the input decides the result (pipeline.run_key)
    identity: dict | None = None  # run: the identification stage's record (None for models without it)
    version: str = __version__
    extra: dict = field(default_factory=dict)  # keys after the contract's: NIfTI sidecar, time, outputs, history

    @classmethod
    def of_run(
        cls,
        path: Path | None,
        scan,
        fingerprint: dict | None,
        calibration,
        measures: dict,
        info: dict,
        compartments: dict | None,
        warnings: list[str],
        model: dict,
        backend: dict,
        run_key: dict | None,
        mask_file: str | None = None,
    ) -> Record:
        """The record of a model's mask: ``measures`` from ``measure.vbmd``, ``info`` from the pipeline's
        segmentation (side, side_source, qc, identity); ``scan`` the file read (None: an array), ``calibration``
        its density calibration."""
        return cls(
            **{k: measures[k] for k in MEASURES},
            side=info["side"],
            side_source=info["side_source"],
            backend=backend,
            model=model,
            calibration=calibration_record(calibration),
            scan={**scan_record(path, scan), "fingerprint": fingerprint} if scan is not None else {},
            mask={
                "file": mask_file,
                "voxels": measures["voxels"],
                **({"edge": info["edge"]} if info.get("edge") else {}),
                **({"small_bones_removed": info["small_bones_removed"]} if info.get("small_bones_removed") else {}),
                **({"joint_parted": info["joint_parted"]} if info.get("joint_parted") else {}),
                **({"lost_slices": info["lost_slices"]} if info.get("lost_slices") else {}),
            },
            compartments=compartments,
            qc=info.get("qc", {}),
            warnings=warnings,
            kind=RUN,
            run_key=run_key,
            identity=info.get("identity"),
        )

    @classmethod
    def of_given_mask(
        cls,
        path: Path,
        scan,
        measures: dict,
        side: str | None,
        mask: dict,
        compartments: dict | None,
        qc: dict,
        warnings: list[str],
    ) -> Record:
        """The record of ``vbmd-rt measure``: a mask someone made, measured as ``run`` measures its own."""
        return cls(
            **{k: measures[k] for k in MEASURES},
            side=side,
            side_source="detected",
            backend=dict(GIVEN_MASK_BACKEND),
            model=dict(GIVEN_MASK_MODEL),
            calibration=calibration_record(scan.calibration),
            scan={**scan_record(path, scan), "fingerprint": scan_fingerprint(scan)},
            mask=mask,
            compartments=compartments,
            qc=qc,
            warnings=warnings,
            kind=GIVEN_MASK,
        )

    @classmethod
    def from_json(cls, d: dict) -> Record:
        """A result JSON read back (of this version or an earlier one: missing keys are empty)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"kind", "version", "extra"}
        kind = GIVEN_MASK if (d.get("backend") or {}).get("name") == GIVEN_MASK else RUN
        measures: dict = {k: d.get(k) for k in MEASURES}  # as found (None where an old result has none)
        return cls(
            **measures,
            side=d.get("side"),
            side_source=d.get("side_source") or "detected",
            backend=d.get("backend") or {},
            model=d.get("model") or {},
            calibration=d.get("calibration"),
            scan=d.get("scan") or {},
            mask=d.get("mask") or {},
            compartments=d.get("compartments"),
            qc=d.get("qc"),  # type: ignore[arg-type]  # kept as found (None in results of old versions)
            warnings=d.get("warnings") or [],
            timings_s=d.get("timings_s") or {},
            kind=kind,
            run_key=d.get("run_key"),
            identity=d.get("identity"),
            version=d.get("vbmd_rt_version"),  # type: ignore[arg-type]
            extra={k: v for k, v in d.items() if k not in known and k != "vbmd_rt_version"},
        )

    def to_json(self) -> dict:
        """The result JSON (``OUT/NAME.json``): the contract's keys in their order, then ``extra``."""
        d: dict = {k: getattr(self, k) for k in MEASURES}
        d.update(
            side=self.side,
            side_source=self.side_source,
            backend=self.backend,
            model=self.model,
            calibration=self.calibration,
            timings_s=self.timings_s,
            scan=self.scan,
        )
        if self.kind == RUN:
            d["run_key"] = self.run_key
        d["mask"] = self.mask
        if self.kind == RUN:
            d["identity"] = self.identity
        d.update(compartments=self.compartments, qc=self.qc, warnings=self.warnings, vbmd_rt_version=self.version)
        d.update(self.extra)
        return finite(d)

    def summary_values(self) -> dict:
        """The columns of a summary row (``cohort.summary.ROW_FIELDS``) that come from the result."""
        from vbmd_rt.runtime import compartments

        r: dict = {k: getattr(self, k) for k in MEASURES}
        r["side"] = self.side
        comp = self.compartments or {}
        for k in compartments.PARAMETERS:
            r[k] = comp.get(k)
            for region in compartments.REGIONS:
                r[f"{region}_{k}"] = (comp.get(region) or {}).get(k)
        r["backend"] = self.backend.get("name")
        r["precision"] = self.backend.get("precision")
        for k, v in self.timings_s.items():
            r[f"{k}_s"] = v
        r["warnings"] = " | ".join(self.warnings) or None
        r["model"] = self.model.get("name")
        r["model_sha256"] = self.model.get("sha256")
        r["vbmd_rt_version"] = self.version
        if isinstance(self.qc, dict):  # pass | review, and why
            r["qc_status"] = self.qc.get("status")
            r["qc_reasons"] = " | ".join(str(x) for x in self.qc.get("reasons") or []) or None
        return r


def calibration_record(cal) -> dict | None:
    """The result JSON's ``calibration``: the density equation the D100 was computed with."""
    if cal is None:
        return None
    return {
        "slope": cal.slope,
        "intercept": cal.intercept,
        "mu_scaling": cal.mu_scaling,
        "mu_water": cal.mu_water,
        "mg_ha_cm3_per_unit": cal.per_unit,
    }


def scan_record(path: Path | None, scan) -> dict:
    """The result JSON's ``scan``: file name, geometry, the log's public fields and the scan date."""
    return {
        "file": None if path is None else Path(path).name,
        "shape_zyx": list(scan.header.shape),
        "version": scan.header.version,
        "element_size_mm": [float(v) for v in scan.header.element_size_mm],
        "position": [int(v) for v in scan.header.position],
        "scanner": proclog.public_fields(scan.header.log),
        "date": proclog.scan_date(scan.header.processing_log),
    }


def scan_fingerprint(scan) -> dict | None:
    from vbmd_rt.runtime.io import outputs

    return outputs.fingerprint_of(scan)


def model_record(model, backend) -> dict:
    """The result JSON's ``model``: the model's name, architecture, ONNX sha256 and intended use."""
    return {
        "name": model.name,
        "architecture": model.architecture,
        "sha256": backend.onnx_sha256 or model.sha256("fp32"),
        "intended_use": model.card.intended_use,
    }


def timings(seconds: dict[str, float], stages, total: float, only_run: bool = False) -> dict[str, float]:
    """``timings_s``: each stage's seconds (every one of ``stages``, or with ``only_run`` those that ran),
    rounded to 0.1 ms, and ``total``."""
    t = {k: round(seconds.get(k, 0.0), 4) for k in stages if not only_run or k in seconds}
    t["total"] = round(total, 4)
    return t
