"""NIfTI exports as HR-pQCT tools expect them (issue 21): `.nii` (uncompressed) as well as `.nii.gz`,
JSON sidecars with ormir-mids' Scanco calibration keys and the unit of the values, and a cropped NIfTI
mask with --mask-format cropped that still reads back onto the scan's grid."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from vbmd_rt.runtime.io import aim, masks, nifti

from .conftest import cli_here, tiny_scan

LOG = "\n".join(
    [
        "Mu_Scaling                    8192",
        "Density: unit                 mg HA/ccm",
        "Density: slope                1441.13599",
        "Density: intercept            -356.445007",
        "HU: mu water                  0.2464",
        "",
    ]
)


def _scan():
    hdr = aim.AimHeader(
        version=3,
        type_code=aim.TYPE_INT16,
        dim=(13, 11, 9),
        position=(100, 200, 30),
        element_size_mm=(0.082, 0.082, 0.082),
        processing_log=LOG,
    )
    m = np.zeros((9, 11, 13), np.uint8)
    m[2:6, 3:8, 4:10] = 1
    return aim.Scan(data=(m.astype(np.int16) * 3000 + 500), header=hdr), m


@pytest.mark.parametrize(("fmt", "ext"), [("nifti", ".nii.gz"), ("nii", ".nii")])
def test_nifti_and_nii_write_the_pair_and_the_mask_sidecar(tmp_path, fmt, ext):
    scan, m = _scan()
    names = nifti.export_names("S", fmt)
    assert names == [f"S{ext}", f"S_SEG{ext}", "S_SEG.json"]
    nifti.export_pair(tmp_path, "S", scan, m, fmt)
    for n in names:
        assert (tmp_path / n).is_file()
    raw = (tmp_path / f"S{ext}").read_bytes()
    if fmt == "nii":
        assert raw[344:348] == b"n+1\0"  # plain NIfTI-1, not gzip
    else:
        assert gzip.decompress(raw)[344:348] == b"n+1\0"
    side = json.loads((tmp_path / "S_SEG.json").read_text())
    assert side["ScancoMuScaling"] == 8192 and side["ScancoDensitySlope"] == pytest.approx(1441.13599)
    assert side["ScancoDensityIntercept"] == pytest.approx(-356.445007)
    assert side["ScancoMuWater"] == pytest.approx(0.2464)
    assert side["Units"] == "label" and side["Labels"]["1"].startswith("MC2") and side["Cropped"] is False


def test_the_scans_sidecar_keys_say_the_unit_of_the_values():
    scan, _ = _scan()
    s = nifti.scan_sidecar(scan, "nii")
    assert s["Units"] == "mg HA/cm3" and "scl_slope" in s["UnitsDescription"]
    assert s["ScancoMuScaling"] == 8192 and s["ScancoDensityUnit"] == "mg HA/ccm"
    assert nifti.scan_sidecar(scan, "mha")["Units"] == "native"


def test_nii_is_read_by_nibabel_in_mg_ha_cm3(tmp_path):
    nib = pytest.importorskip("nibabel")
    scan, m = _scan()
    nifti.export_pair(tmp_path, "S", scan, m, "nii")
    img = nib.load(str(tmp_path / "S.nii"))
    dens = np.asarray(img.get_fdata()).transpose(2, 1, 0)
    cal = scan.calibration
    np.testing.assert_allclose(dens, scan.data * cal.per_unit + cal.intercept, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("fmt", ["nifti", "nii"])
def test_a_cropped_nifti_mask_covers_the_bone_and_reads_back_onto_the_grid(tmp_path, fmt):
    scan, m = _scan()
    nifti.export_pair(tmp_path, "S", scan, m, fmt, cropped=True)
    ext = ".nii" if fmt == "nii" else ".nii.gz"
    data, aff = nifti.read_nifti(tmp_path / f"S_SEG{ext}")
    assert data.shape == (4, 5, 6)  # the bone's box, not the 9 x 11 x 13 grid
    assert aff[:3, 3] * np.array([-1, -1, 1]) == pytest.approx(np.array([104, 203, 32]) * 0.082, rel=1e-6)
    back = masks.read_mask_file(tmp_path / f"S_SEG{ext}", scan.header)
    np.testing.assert_array_equal(back, m)
    assert json.loads((tmp_path / "S_SEG.json").read_text())["Cropped"] is True


def test_run_exports_nii_with_sidecars_and_a_cropped_mask(phantoms, tmp_path):
    (tmp_path / "in").mkdir()
    scan = tiny_scan(phantoms / "PHANTOM_0000.AIM", tmp_path / "in" / "T.AIM")
    out = tmp_path / "out"
    r = cli_here("run", scan, "-o", out, "--model", "classical", "--export", "nii", "--mask-format", "cropped", "-q")
    assert r.returncode == 0, r.stderr
    for n in ("T.nii", "T_SEG.nii", "T_SEG.json", "T.json", "T_SEG.AIM"):
        assert (out / n).is_file(), n
    res = json.loads((out / "T.json").read_text())
    assert res["ScancoMuScaling"] == 8192 and res["Units"] == "mg HA/cm3"  # NAME.json: the scan's sidecar too
    seg = aim.read_aim(out / "T_SEG.AIM")
    data, _ = nifti.read_nifti(out / "T_SEG.nii")
    assert data.shape == seg.header.shape  # the NIfTI mask cropped like the mask AIM
    hdr = aim.read_header(scan)
    np.testing.assert_array_equal(
        masks.read_mask_file(out / "T_SEG.nii", hdr), masks.read_mask_file(out / "T_SEG.AIM", hdr)
    )
