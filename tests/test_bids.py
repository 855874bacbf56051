"""`run --layout bids`: a BIDS-style derivative (derivatives/vbmd-rt/ with dataset_description.json,
sub-*/ses-* folders from the inputs' names or folders, vbmd.tsv with its units in vbmd.json)."""

from __future__ import annotations

import json
from pathlib import Path

from vbmd_rt.cohort import bids

from .conftest import cli_here, tiny_scan


def test_entities_come_from_the_name_first_then_the_folders():
    assert bids.entities(Path("/d/sub-07/ses-2/scan.AIM")) == {"sub": "07", "ses": "2"}
    assert bids.entities(Path("/d/sub-07/sub-01_ses-3_hrpqct.AIM")) == {"sub": "01", "ses": "3"}
    assert bids.entities(Path("/d/patient1/PHANTOM_0000.AIM")) == {}
    out = Path("/o")
    assert bids.scan_dir(out, Path("/d/sub-07/ses-2/s.AIM")) == out / "derivatives/vbmd-rt/sub-07/ses-2"
    assert bids.scan_dir(out, Path("/d/x/s.AIM")) == out / "derivatives/vbmd-rt"


def test_run_layout_bids_writes_a_derivative(phantoms, tmp_path):
    a = tmp_path / "in" / "sub-01" / "ses-1"
    b = tmp_path / "in" / "other"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    tiny_scan(phantoms / "PHANTOM_0000.AIM", a / "SCAN.AIM")
    tiny_scan(phantoms / "PHANTOM_0001.AIM", b / "sub-02_ses-2_hrpqct.AIM")
    tiny_scan(phantoms / "PHANTOM_0002.AIM", b / "SCAN.AIM")  # same name as the first: another folder
    out = tmp_path / "out"
    r = cli_here("run", tmp_path / "in", "-o", out, "--recursive", "--model", "classical", "--layout", "bids", "-q")
    assert r.returncode == 0, r.stderr
    root = out / "derivatives" / "vbmd-rt"
    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "vbmd-rt"
    assert desc["BIDSVersion"]
    assert (root / "sub-01" / "ses-1" / "SCAN.json").is_file()
    assert (root / "sub-01" / "ses-1" / "SCAN_SEG.AIM").is_file()
    assert (root / "sub-02" / "ses-2" / "sub-02_ses-2_hrpqct.json").is_file()
    assert (root / "SCAN.json").is_file()  # no entities: the derivative's top folder
    lines = (root / "vbmd.tsv").read_text().splitlines()
    head = lines[0].split("\t")
    assert head[:2] == ["participant_id", "session_id"] and "d100_mg_ha_cm3" in head
    rows = [dict(zip(head, line.split("\t"), strict=True)) for line in lines[1:]]
    assert sorted((r["participant_id"], r["session_id"]) for r in rows) == [
        ("n/a", "n/a"),
        ("sub-01", "ses-1"),
        ("sub-02", "ses-2"),
    ]
    assert all(float(r["d100_mg_ha_cm3"]) > 0 and r["qc_status"] in ("pass", "review") for r in rows)
    units = json.loads((root / "vbmd.json").read_text())
    assert units["d100_mg_ha_cm3"]["Units"] == "mg HA/cm3" and units["bone_volume_mm3"]["Units"] == "mm3"
    assert not (out / "summary.csv").exists()


def test_layout_bids_runs_in_this_process(tmp_path):
    scan = tmp_path / "S.AIM"
    scan.write_bytes(b"\0" * 64)
    r = cli_here("run", scan, "-o", tmp_path / "out", "--layout", "bids", "--num-parts", "2")
    assert r.returncode == 2 and "--layout bids" in r.stderr and not (tmp_path / "out").exists()
