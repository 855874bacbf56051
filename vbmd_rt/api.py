"""The Python API: a predictor loaded once, run on many scans (files or arrays).

::

    import vbmd_rt

    with vbmd_rt.Predictor() as predictor:               # the bundled model on the best backend here
        result = predictor.run("scan.AIM")                # or an array with spacing= and calibration=
        print(result.d100_mg_ha_cm3, result.qc["status"], result.timings_s["total"])
        mask = result.mask                                # (z, y, x) uint8, 1 inside MC2

``Predictor.run_to`` is ``run`` plus the scan's output files (``pipeline.run_scan``). The command line
(``vbmd-rt run``, ``watch``, cohorts on Dask) loads a ``Predictor`` once and calls the pipeline with its model
and backend directly (``cohort.batch.plan``/``run``, ``runtime.service``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vbmd_rt.runtime import pipeline
from vbmd_rt.runtime.inference.base import Backend
from vbmd_rt.runtime.io.calibration import Calibration
from vbmd_rt.runtime.model import Model, load_model
from vbmd_rt.runtime.result import Record, timings


@dataclass
class Result:
    """One scan's result: the native-resolution MC2 mask and what was measured on it."""

    mask: np.ndarray  # (z, y, x) uint8, 1 inside MC2
    d100_mg_ha_cm3: float | None  # None without a density calibration
    bone_volume_mm3: float
    mean_slice_area_mm2: float
    slices: int
    side: str | None
    qc: dict
    warnings: list[str]
    timings_s: dict[str, float]
    info: dict = field(default_factory=dict)
    compartments: dict | None = None  # Ct.BMD, Tb.BMD, Ct.Th, ... (runtime.compartments); None uncalibrated
    compartment_labels: np.ndarray | None = None  # inside compartments' box: 1 cortex, 2 trabecular
    record: Record | None = field(default=None, repr=False)  # what the result JSON is made from

    @classmethod
    def of(cls, record: Record, mask: np.ndarray, info: dict, labels: np.ndarray | None = None) -> Result:
        """The API's view of a scan's result record (``runtime.result``), with the mask and the labels."""
        return cls(
            mask,
            record.d100_mg_ha_cm3,
            record.bone_volume_mm3,
            record.mean_slice_area_mm2,
            record.slices,
            record.side,
            record.qc,
            record.warnings,
            record.timings_s,
            info,
            record.compartments,
            labels,
            record,
        )

    @property
    def identity(self) -> dict | None:
        """The identification stage's record (candidates, evidence, choice, margin), where the model has one."""
        return self.info.get("identity")

    def to_dict(self) -> dict:
        """The JSON-able part (everything but the mask)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("mask", "info", "compartment_labels", "record")}


class Predictor:
    """A model and an active backend, loaded once for any number of scans.

    ``model``: an exported model folder, ``"classical"``, or ``None`` for the bundled network;
    ``backend``: ``auto``, ``tensorrt``, ``tensorrt-rtx``, ``onnxruntime``, or a :class:`Backend` instance;
    ``device``: ``auto``, ``cpu`` or ``cuda`` (``cuda`` without a usable GPU is an error, never the CPU);
    ``max_memory``: bytes a scan may need, predicted from its header before any work (default: three
    quarters of the RAM); a scan past it is refused with a ``VbmdInputError``.
    """

    def __init__(
        self,
        model: str | Path | Model | None = None,
        backend: str | Backend = "auto",
        device: str = "auto",
        threads: int | None = None,
        log=None,
        max_memory: int | None = None,
    ):
        from vbmd_rt.runtime.inference.factory import create

        self.model = model if isinstance(model, Model) else load_model(model)
        self.backend = (
            backend if isinstance(backend, Backend) else create(backend, self.model, device, threads, log=log)
        )
        self.max_memory = max_memory  # bytes a scan may need (None: three quarters of the RAM)
        self.backend.activate()

    def close(self) -> None:
        self.backend.deactivate()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(
        self,
        scan: str | Path | np.ndarray,
        spacing: tuple[float, float, float] | None = None,
        calibration: Calibration | None = None,
        side: str = "auto",
    ) -> Result:
        """Segment MC2 and measure vBMD of one scan: a path to an AIM/ISQ file (its header gives spacing and
        calibration), or a (z, y, x) array of stored values with ``spacing`` (mm, z y x) and ``calibration``."""
        timer = pipeline.Timer()
        t0 = time.perf_counter()
        if isinstance(scan, (str, Path)):
            with timer("read"):
                s = pipeline.read_scan(Path(scan))
            data, spacing, calibration, path = s.data, s.spacing_zyx, s.calibration, Path(scan)
            log = s.header.processing_log
        else:
            data, path, log, s = np.asarray(scan), None, None, None
            if data.ndim != 3:
                raise ValueError(f"expected a (z, y, x) array, got shape {data.shape}")
            if spacing is None:
                raise ValueError("an array needs spacing=(z, y, x) in mm")
        a = pipeline.analyse(
            data,
            tuple(float(v) for v in spacing),
            calibration,
            self.model,
            self.backend,
            side,
            timer,
            path=path,
            max_memory=self.max_memory,
            log=log,
        )
        rec = pipeline.record_of(a, self.model, self.backend, calibration, path, s, None, pipeline.RunOptions(side))
        rec.timings_s = timings(timer.seconds, [k for k in pipeline.STAGES if k != "write"], time.perf_counter() - t0)
        return Result.of(rec, a.mask, a.info, None if a.compartments is None else a.compartments.labels)

    def run_to(self, path: str | Path, out: str | Path, options: pipeline.RunOptions | None = None, stage=None) -> dict:
        """``run`` plus the scan's files in ``out`` (mask AIM, JSON, PNG, ...); returns the JSON result."""
        return pipeline.run_scan(path, out, self.model, self.backend, options, stage=stage)
