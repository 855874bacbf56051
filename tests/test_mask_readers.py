"""Every mask vbmd-rt writes (rle, cropped, char, the synth _GT truth, the --save-prob AIM) reads the same
in vbmd-rt, aimio-py and ITK's Scanco reader (itk-ioscanco): values as stored, geometry from the header.

ITK rescales *uncompressed* data by the log's calibration (to HU when Mu_Scaling > 1 and HU: mu water
> 0; else by Density: slope / Mu_Scaling and the intercept, unless they are 1 and 0; the last entry of a
key wins). Run-length data is never rescaled, which is why IPL's run-length masks read 0/127. Our masks'
logs end with IPL's parameter lines and an identity scaling (runtime.io.proclog.values_block).
"""

from __future__ import annotations

import numpy as np
import pytest

from vbmd_rt.runtime.io import aim, masks, proclog

from .conftest import SAMPLES, needs_samples

FORMATS = ("rle", "cropped", "char")


def itk_rescale(header: aim.AimHeader) -> tuple[float, float] | None:
    """The (slope, intercept) ITK's Scanco reader applies to this file's stored values; None: none."""
    if header.type_code in (0x00150001, 0x00080002, 0x00060001):  # compressed: ITK never rescales them
        return None
    log = proclog.parse_log(header.processing_log)
    mu_scaling = float(log.get("Mu_Scaling", 1.0) or 1.0)
    slope = float(log.get("Density: slope", 1.0)) / (mu_scaling if mu_scaling else 1.0)
    intercept = float(log.get("Density: intercept", 0.0))
    if slope == 1.0 and intercept == 0.0:
        return None
    mu_water = float(log.get("HU: mu water", 0.0) or 0.0)
    if mu_scaling > 1.0 and mu_water > 0:
        return 1000.0 / (mu_water * mu_scaling), -1000.0
    return slope, intercept


@pytest.fixture(scope="module")
def written(phantoms, tmp_path_factory):
    """{name: path} of one phantom's masks in every format, its _GT truth and a probability AIM."""
    scan = aim.read_aim(phantoms / "PHANTOM_0000.AIM")
    truth = aim.read_aim(phantoms / "PHANTOM_0000_GT.AIM")
    mask = np.asarray(truth.data) != 0
    d = tmp_path_factory.mktemp("mask-readers")
    files = {"gt": phantoms / "PHANTOM_0000_GT.AIM"}
    for fmt in FORMATS:
        files[fmt] = d / f"{fmt}_SEG.AIM"
        masks.write_mask(files[fmt], mask, scan.header, fmt, log_entry=f"test {fmt}")
    prob = (mask * 93).astype(np.uint8)
    files["prob"] = d / "PROB.AIM"
    aim.write_aim(files["prob"], prob, scan.header, type="char", log_entry="prob", values=masks.PROB_VALUES)
    return files


@pytest.mark.parametrize("name", ["gt", *FORMATS, "prob"])
def test_no_reader_that_follows_the_log_rescales_our_masks(written, name):
    h = aim.read_header(written[name])
    assert itk_rescale(h) is None
    log = proclog.parse_log(h.processing_log)
    assert log["Parameter name"] in ("Segmented Objects", "Probability x100")
    assert log["Scaled by factor"] == 1


def test_the_scan_keeps_its_calibration_and_the_old_masks_were_rescaled(phantoms):
    h = aim.read_header(phantoms / "PHANTOM_0000.AIM")
    assert h.calibration is not None and h.calibration.mu_scaling == 8192
    # what a char mask with the scan's log alone (vbmd-rt <= 0.2, synth 1.1) gave ITK: 0/127 -> 24/87
    slope, intercept = itk_rescale(h)
    stored = np.array([0, 127], dtype=np.int8)
    assert list((stored * slope + intercept).astype(np.int64).astype(np.int8)) == [24, 87]


@needs_samples
@pytest.mark.parametrize("name", ["aimiopy_DB_07_DNN_DR_T1_TRAB_MASK.AIM", "aimiopy_TRAB_1240_SEG.AIM"])
def test_ipl_masks_are_run_length_which_itk_never_rescales(name):
    h = aim.read_header(SAMPLES / name)
    assert h.type_code == 0x00150001 and itk_rescale(h) is None
    assert proclog.parse_log(h.processing_log)["Mu_Scaling"] == 8192


def _ours(path):
    a = aim.read_aim(path, mmap=False)
    return np.asarray(a.data), a.header


@pytest.mark.parametrize("name", ["gt", *FORMATS, "prob"])
def test_aimio_reads_what_vbmd_rt_reads(written, name):
    py_aimio = pytest.importorskip("py_aimio")
    data, h = _ours(written[name])
    theirs, meta = py_aimio.read_aim(str(written[name]))
    np.testing.assert_array_equal(np.asarray(theirs).astype(np.int16), data.astype(np.int16))
    assert tuple(meta["position"]) == tuple(h.position)


def _itk():
    itk = pytest.importorskip("itk", reason="itk-ioscanco not installed (pip install 'vbmd-rt[itk]')")
    try:
        itk.ScancoImageIO.New()
    except AttributeError:
        pytest.skip("itk is installed without itk-ioscanco")
    return itk


@pytest.mark.parametrize("name", ["gt", *FORMATS, "prob"])
def test_itk_reads_what_vbmd_rt_reads(written, name):
    itk = _itk()
    data, h = _ours(written[name])
    img = itk.imread(str(written[name]), itk.F)  # ITK Python wraps no signed char image
    theirs = itk.array_from_image(img)
    np.testing.assert_array_equal(theirs, data.astype(np.float32))
    el = np.asarray(h.element_size_mm, dtype=np.float64)
    assert np.allclose(img.GetSpacing(), el, rtol=1e-6)
    assert np.allclose(img.GetOrigin(), np.asarray(h.position) * el, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fmt", FORMATS)
def test_itk_places_every_format_on_the_scan_grid_like_vbmd_rt(phantoms, written, fmt):
    itk = _itk()
    scan_h = aim.read_header(phantoms / "PHANTOM_0000.AIM")
    ours = masks.read_mask_file(written[fmt], scan_h)
    img = itk.imread(str(written[fmt]), itk.F)
    el = np.asarray(scan_h.element_size_mm)
    corner = np.rint(np.asarray(img.GetOrigin()) / el).astype(int) - np.asarray(scan_h.position)  # x, y, z
    theirs = itk.array_from_image(img) != 0
    placed = np.zeros(scan_h.shape, dtype=bool)
    z, y, x = corner[2], corner[1], corner[0]
    placed[z : z + theirs.shape[0], y : y + theirs.shape[1], x : x + theirs.shape[2]] = theirs
    np.testing.assert_array_equal(placed, ours.astype(bool))


@needs_samples
@pytest.mark.parametrize(
    ("name", "values"),
    [("aimiopy_DB_07_DNN_DR_T1_TRAB_MASK.AIM", [0, 127]), ("aimiopy_TRAB_1240_SEG.AIM", [0, 1])],
)
def test_itk_reads_ipl_masks_as_vbmd_rt_does(name, values):
    itk = _itk()
    data, _ = _ours(SAMPLES / name)
    theirs = itk.array_from_image(itk.imread(str(SAMPLES / name), itk.F))
    assert sorted(np.unique(theirs).astype(int)) == values
    np.testing.assert_array_equal(theirs, data.astype(np.float32))
