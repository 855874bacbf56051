"""One result record (``runtime.result``): the result JSON, ``vbmd_rt.Result``, ``measure`` and the summary
row are all made from it, and agree."""

import json
from pathlib import Path

import pytest

from tests.conftest import tiny_scan
from vbmd_rt.cohort import batch
from vbmd_rt.runtime import pipeline
from vbmd_rt.runtime.result import GIVEN_MASK, RUN, Record

CONTRACT = [  # the architecture note's keys, in the order NAME.json has them
    "d100_mg_ha_cm3",
    "bone_volume_mm3",
    "mean_slice_area_mm2",
    "slices",
    "side",
    "side_source",
    "backend",
    "model",
    "calibration",
    "timings_s",
    "scan",
    "run_key",
    "mask",
    "identity",
    "compartments",
    "qc",
    "warnings",
    "vbmd_rt_version",
]


@pytest.fixture(scope="module")
def tiny(phantoms, tmp_path_factory) -> Path:
    return tiny_scan(phantoms / "PHANTOM_0000.AIM", tmp_path_factory.mktemp("tiny_result") / "T.AIM", slices=20)


@pytest.fixture(scope="module")
def classical():
    from vbmd_rt import Predictor

    with Predictor("classical", device="cpu") as p:
        yield p


def test_run_json_api_result_and_summary_row_come_from_one_record(tiny, classical, tmp_path):
    out = tmp_path / "out"
    written = pipeline.run_scan(tiny, out, classical.model, classical.backend, pipeline.RunOptions())
    on_disk = json.loads((out / "T.json").read_text())
    assert on_disk == json.loads(json.dumps(written))  # what run returns is what it wrote
    assert list(on_disk)[: len(CONTRACT)] == CONTRACT
    assert set(on_disk) - set(CONTRACT) == {"time", "outputs", "history"}

    rec = Record.from_json(on_disk)
    assert rec.kind == RUN and rec.to_json() == on_disk  # read back whole
    row = batch.row(tiny, "done", on_disk)
    for k, v in rec.summary_values().items():
        assert row[k] == v
    assert row["d100_mg_ha_cm3"] == on_disk["d100_mg_ha_cm3"] and row["qc_status"] == on_disk["qc"]["status"]

    r = classical.run(tiny)  # the API's result: the same record, without files
    assert r.record is not None and r.record.kind == RUN
    for k in ("d100_mg_ha_cm3", "bone_volume_mm3", "mean_slice_area_mm2", "slices", "side", "compartments"):
        assert json.loads(json.dumps(getattr(r, k))) == on_disk[k], k
    assert r.qc["status"] == on_disk["qc"]["status"]
    assert set(r.to_dict()) == {
        "d100_mg_ha_cm3",
        "bone_volume_mm3",
        "mean_slice_area_mm2",
        "slices",
        "side",
        "qc",
        "warnings",
        "timings_s",
        "compartments",
    }
    j = r.record.to_json()
    assert j["scan"]["fingerprint"] is None and j["scan"]["file"] == "T.AIM"
    assert j["run_key"] == on_disk["run_key"]


def test_measure_json_is_the_record_of_a_given_mask(tiny, classical, tmp_path):
    from vbmd_rt.runtime.remeasure import measure_mask

    out = tmp_path / "out"
    pipeline.run_scan(tiny, out, classical.model, classical.backend, pipeline.RunOptions())
    m = measure_mask(tiny, out / "T_SEG.AIM", tmp_path / "m")
    assert "run_key" not in m and "identity" not in m and "time" not in m
    assert [k for k in CONTRACT if k in m] == [k for k in m if k in CONTRACT]  # the contract's order
    rec = Record.from_json(m)
    assert rec.kind == GIVEN_MASK and rec.to_json() == m
    assert m["backend"] == {"name": "given-mask", "precision": None}
    assert m["model"]["name"] == "given mask" and m["mask"]["source"] == "given"
    row = batch.row(tiny, "done", m)
    assert row["backend"] == "given-mask" and row["d100_mg_ha_cm3"] == m["d100_mg_ha_cm3"]


def test_result_json_holds_no_inf_or_nan():
    """An unchallenged identity margin (inf) or a level with nothing to read (NaN) is null in NAME.json:
    strict JSON readers refuse Python's Infinity and NaN."""
    rec = Record(
        d100_mg_ha_cm3=float("nan"),
        bone_volume_mm3=1.0,
        mean_slice_area_mm2=1.0,
        slices=1,
        side="right",
        side_source="anatomy",
        backend={},
        model={},
        calibration=None,
        scan={},
        mask={},
        compartments={"thresholds_mg_ha_cm3": {"cortex_level": float("nan")}, "range": (1.5, float("-inf"))},
        qc={"status": "review", "identity": {"margin": float("inf"), "reasons": []}},
        warnings=[],
    )
    d = rec.to_json()
    text = json.dumps(d, allow_nan=False)  # raises on inf or NaN
    assert d["qc"]["identity"]["margin"] is None and d["d100_mg_ha_cm3"] is None
    assert d["compartments"]["range"] == [1.5, None] and json.loads(text)["bone_volume_mm3"] == 1.0
