"""Compact mask files (run-length, cropped, char), any mask read back onto the scan's grid, `vbmd-rt measure`,
and the NIfTI/MHA export checked with an independent reader."""

import dataclasses
import json

import numpy as np
import pytest

from tests.conftest import PeakMemory, cli_here, phantom_copies
from vbmd_rt.runtime.errors import VbmdInputError
from vbmd_rt.runtime.io import aim, masks, nifti
from vbmd_rt.runtime.io.codecs import encode_binary_rle


def _header(offset=(0, 0, 0), version=3, shape=(9, 11, 13)):
    nz, ny, nx = shape
    return aim.AimHeader(
        version=version,
        type_code=aim.TYPE_INT16,
        dim=(nx, ny, nz),
        position=(100, 200, 30),
        offset=offset,
        element_size_mm=(0.082, 0.082, 0.082),
        processing_log="Mu_Scaling                    8192\n",
    )


def _mask(full_width: bool, seed=0, shape=(9, 11, 13)):
    rng = np.random.default_rng(seed)
    m = np.zeros(shape, np.uint8)
    if full_width:
        m[2:6, 3:8, :] = rng.random((4, 5, shape[2])) > 0.3
        m[2:6, 3:8, 0] = m[2:6, 3:8, -1] = 1  # runs that cross row ends
    else:
        m[2:6, 3:8, 4:10] = rng.random((4, 5, 6)) > 0.3
    return m


@pytest.mark.parametrize("fmt", masks.MASK_FORMATS)
@pytest.mark.parametrize("full_width", [False, True])
@pytest.mark.parametrize("version", [2, 3])
def test_every_mask_format_reads_back_identical_to_full_char_in_both_readers(tmp_path, fmt, full_width, version):
    py_aimio = pytest.importorskip("py_aimio")
    hdr, m = _header(version=version), _mask(full_width)
    path = tmp_path / "m.aim"
    info = masks.write_mask(path, m, hdr, fmt, log_entry="test", box=(0, 9, 0, 11, 0, 13))
    assert info["format"] == fmt
    ours = aim.read_aim(path)
    theirs, meta = py_aimio.read_aim(str(path))
    np.testing.assert_array_equal(np.asarray(ours.data), theirs)
    assert tuple(meta["position"]) == ours.header.position
    assert tuple(meta["dimensions"]) == ours.header.dim
    assert meta["element_size"] == pytest.approx(hdr.element_size_mm, rel=1e-6)
    for data, pos, el in (
        (ours.data, ours.header.position, ours.header.element_size_mm),
        (theirs, meta["position"], meta["element_size"]),
    ):
        on_grid = masks.place_on_grid(path, np.asarray(data), el, pos, hdr)
        np.testing.assert_array_equal(on_grid, m)
    if fmt == "rle":
        assert ours.header.type_name == "binary-rle" and ours.header.dim == hdr.dim
        assert ours.header.position == hdr.position
    elif fmt == "cropped":
        assert ours.header.type_name == "char" and ours.header.dim != hdr.dim
    else:
        assert ours.header.type_name == "char" and ours.header.dim == hdr.dim
        assert set(np.unique(ours.data)) <= {0, 127}


@pytest.mark.parametrize("full_width", [False, True])
def test_box_encoding_equals_the_whole_volume_encoder(full_width):
    m = _mask(full_width, seed=3)
    box = masks.bounding_box(m)
    fast = masks.encode_in_box(m, box)
    slow = encode_binary_rle((m * 127).astype(np.int8).ravel(), (0, 127))
    assert fast.stream == slow and fast.shape == m.shape


def test_a_wrong_box_hint_never_drops_voxels_when_the_count_is_given(tmp_path):
    hdr, m = _header(), _mask(False)
    wrong = (0, 9, 0, 11, 0, 5)  # misses most of the object
    masks.write_mask(tmp_path / "w.aim", m, hdr, "rle", box=wrong, voxels=int(m.sum()))
    np.testing.assert_array_equal(masks.read_mask_file(tmp_path / "w.aim", hdr), m)


def test_an_empty_mask_is_one_background_run(tmp_path):
    hdr = _header()
    m = np.zeros(hdr.shape, np.uint8)
    masks.write_mask(tmp_path / "e.aim", m, hdr, "rle")
    assert not np.asarray(aim.read_aim(tmp_path / "e.aim").data).any()


def test_a_scan_with_an_offset_gets_a_cropped_char_mask_not_run_length(tmp_path):
    hdr, m = _header(offset=(2, 3, 1)), _mask(False)
    info = masks.write_mask(tmp_path / "o.aim", m, hdr, "rle")
    assert info["format"] == "cropped" and info["type"] == "char"
    np.testing.assert_array_equal(masks.read_mask_file(tmp_path / "o.aim", hdr), m)


def test_a_full_char_mask_is_filled_in_the_bones_box_only(tmp_path):
    """A whole-grid char AIM (``--mask-format char``) was the mask compared with 0 over the whole scan, then
    copied (a 2 GB XtremeCT II stack twice over): now written in the bone's box, the rest of the grid zero pages
    never touched. The file reads back as the mask."""
    from vbmd_rt.runtime.postprocess import sparse_zeros

    hdr = _header(shape=(100, 2000, 2000))
    big = sparse_zeros(hdr.shape)  # 400 MB of zero pages
    big[40:60, 900:1000, 900:1000] = 1
    with PeakMemory() as pm:
        masks.write_mask(tmp_path / "c.aim", big, hdr, "char", box=(40, 60, 900, 1000, 900, 1000), voxels=200000)
    assert pm.grown < 150 * 2**20
    back = np.asarray(aim.read_aim(tmp_path / "c.aim").data)
    assert back.shape == big.shape and int(np.count_nonzero(back)) == 200000
    assert (back[40:60, 900:1000, 900:1000] == masks.MASK_VALUE).all()


def test_a_mask_of_another_voxel_size_or_outside_the_scan_is_refused(tmp_path):
    hdr, m = _header(), _mask(False)
    other = dataclasses.replace(hdr, element_size_mm=(0.0607,) * 3)
    masks.write_mask(tmp_path / "a.aim", m, other, "rle")
    with pytest.raises(VbmdInputError, match="voxel size"):
        masks.read_mask_file(tmp_path / "a.aim", hdr)
    moved = dataclasses.replace(hdr, position=(100, 200, 36))  # 6 slices further: MC2 runs off the scan
    masks.write_mask(tmp_path / "b.aim", m, moved, "char")
    with pytest.raises(VbmdInputError, match="outside the scan"):
        masks.read_mask_file(tmp_path / "b.aim", hdr)


def test_nifti_export_has_the_aims_spacing_and_origin_for_an_independent_reader(tmp_path):
    nib = pytest.importorskip("nibabel")
    hdr, m = _header(), _mask(False)
    scan = aim.Scan(data=m.astype(np.int16) * 300, header=hdr)
    scan_nii, mask_nii = nifti.export_pair(tmp_path, "S", scan, m, "nifti")
    for f, dtype in ((scan_nii, np.int16), (mask_nii, np.uint8)):
        img = nib.load(str(f))
        assert img.header.get_zooms() == pytest.approx((0.082,) * 3, rel=1e-6)
        aff = img.affine  # RAS; ITK/Slicer's LPS origin is position x element size
        origin_lps = aff[:3, 3] * np.array([-1, -1, 1])
        assert origin_lps == pytest.approx([100 * 0.082, 200 * 0.082, 30 * 0.082], rel=1e-6)
        assert np.diag(aff)[:3] == pytest.approx([-0.082, -0.082, 0.082], rel=1e-6)
        data = np.asarray(img.dataobj).transpose(2, 1, 0)  # nibabel gives (x, y, z)
        assert data.dtype == dtype
        np.testing.assert_array_equal(data != 0, m != 0)
    # a cropped mask and the full scan share a frame: the mask's origin is its own position
    crop_dir = tmp_path / "crop"
    crop_dir.mkdir()
    masks.write_mask(crop_dir / "c.aim", m, hdr, "cropped")
    c = aim.read_aim(crop_dir / "c.aim")
    nifti.write_nifti(crop_dir / "c.nii", np.asarray(c.data), c.header.element_size_mm, c.header.position)
    aff = nib.load(str(crop_dir / "c.nii")).affine
    assert aff[:3, 3] * np.array([-1, -1, 1]) == pytest.approx(np.asarray(c.header.position) * 0.082, rel=1e-6)


def test_mha_export_writes_offset_and_spacing(tmp_path):
    hdr, m = _header(), _mask(False)
    f = nifti.write_mha(tmp_path / "m.mha", m, hdr.element_size_mm, hdr.position)
    text = f.read_bytes().split(b"ElementDataFile = LOCAL\n")[0].decode()
    fields = dict(line.split(" = ") for line in text.splitlines())
    assert [float(v) for v in fields["Offset"].split()] == pytest.approx([8.2, 16.4, 2.46])
    assert [float(v) for v in fields["ElementSpacing"].split()] == pytest.approx([0.082] * 3)
    assert fields["DimSize"] == "13 11 9" and fields["TransformMatrix"] == "1 0 0 0 1 0 0 0 1"


def test_nifti_mask_reads_back_onto_the_grid_also_when_flipped(tmp_path):
    hdr, m = _header(), _mask(False)
    nifti.write_nifti(tmp_path / "m.nii.gz", m, hdr.element_size_mm, hdr.position)
    np.testing.assert_array_equal(masks.read_mask_file(tmp_path / "m.nii.gz", hdr), m)
    nib = pytest.importorskip("nibabel")
    img = nib.load(str(tmp_path / "m.nii.gz"))
    ras = nib.as_closest_canonical(img)  # x and y stored the other way round, as some tools save
    nib.save(ras, str(tmp_path / "ras.nii.gz"))
    np.testing.assert_array_equal(masks.read_mask_file(tmp_path / "ras.nii.gz", hdr), m)


# --------------------------------------------------------------------------- `vbmd-rt measure` end to end


@pytest.fixture(scope="module")
def run_out(phantoms, tmp_path_factory):
    cases = phantom_copies(phantoms, tmp_path_factory.mktemp("mscans"), 1)
    out = tmp_path_factory.mktemp("mout")
    r = cli_here("run", cases / "PHANTOM_0000.AIM", "-o", out, "-q", "--export", "nifti")
    assert r.returncode == 0, r.stderr
    return cases, out


def test_measure_on_runs_own_mask_reproduces_its_d100_exactly(run_out, tmp_path):
    cases, out = run_out
    res = json.loads((out / "PHANTOM_0000.json").read_text())
    assert res["mask"]["type"] == "binary-rle"
    r = cli_here(
        "measure", cases / "PHANTOM_0000.AIM", out / "PHANTOM_0000_SEG.AIM", "-o", tmp_path / "m", "--report", "html"
    )
    assert r.returncode == 0, r.stderr
    assert 'class="qc pass"' in (tmp_path / "m" / "PHANTOM_0000.html").read_text()
    again = json.loads((tmp_path / "m" / "PHANTOM_0000.json").read_text())
    for k in ("d100_mg_ha_cm3", "bone_volume_mm3", "mean_slice_area_mm2", "slices", "side", "calibration"):
        assert again[k] == res[k], k
    assert again["qc"]["status"] == "pass" and again["mask"]["source"] == "given"
    # the NIfTI mask `run --export` wrote measures the same
    r = cli_here("measure", cases / "PHANTOM_0000.AIM", out / "PHANTOM_0000_SEG.nii.gz", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["d100_mg_ha_cm3"] == res["d100_mg_ha_cm3"]


def test_run_export_writes_scan_and_mask_in_one_frame(run_out):
    nib = pytest.importorskip("nibabel")
    cases, out = run_out
    scan = aim.read_header(cases / "PHANTOM_0000.AIM")
    a, b = nib.load(str(out / "PHANTOM_0000.nii.gz")), nib.load(str(out / "PHANTOM_0000_SEG.nii.gz"))
    np.testing.assert_allclose(a.affine, b.affine)
    assert a.shape == scan.dim and a.header.get_zooms() == pytest.approx(scan.element_size_mm, rel=1e-6)
    # the scan's NIfTI is in mg HA/cm³
    assert float(a.dataobj.slope) == pytest.approx(scan.calibration.per_unit, rel=1e-6)
    assert float(a.dataobj.inter) == pytest.approx(scan.calibration.intercept, rel=1e-6)


def test_measure_refuses_an_empty_mask_with_exit_2_and_writes_nothing(run_out, tmp_path):
    cases, _ = run_out
    hdr = aim.read_header(cases / "PHANTOM_0000.AIM")
    aim.write_aim(tmp_path / "empty.aim", np.zeros(hdr.shape, np.int8), hdr, type="char")
    r = cli_here("measure", cases / "PHANTOM_0000.AIM", tmp_path / "empty.aim", "-o", tmp_path / "o")
    assert r.returncode == 2 and "empty.aim" in r.stderr and "empty" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_measure_refuses_a_scan_as_mask_and_a_missing_mask(run_out, tmp_path):
    cases, _ = run_out
    r = cli_here("measure", cases / "PHANTOM_0000.AIM", cases / "PHANTOM_0000.AIM")
    assert r.returncode == 2 and "not a mask" in r.stderr, r.stderr
    r = cli_here("measure", cases / "PHANTOM_0000.AIM", tmp_path / "nope.aim", "-o", tmp_path / "o")
    assert r.returncode == 2 and "nope.aim" in r.stderr and not (tmp_path / "o").exists()


def test_measure_flags_a_mask_on_soft_tissue_for_review(run_out, tmp_path):
    cases, _ = run_out
    hdr = aim.read_header(cases / "PHANTOM_0000.AIM")
    m = np.zeros(hdr.shape, np.int8)
    nz, ny, nx = hdr.shape
    m[nz // 3 : nz // 2, 2:20, 2:20] = 127  # a corner of air/soft tissue
    aim.write_aim(tmp_path / "air.aim", m, hdr, type="char")
    r = cli_here("measure", cases / "PHANTOM_0000.AIM", tmp_path / "air.aim", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["qc"]["status"] == "review" and res["qc"]["reasons"]


def test_measure_flags_a_mask_of_two_bones_for_review(run_out, tmp_path):
    cases, out = run_out
    hdr = aim.read_header(cases / "PHANTOM_0000.AIM")
    m = masks.read_mask_file(out / "PHANTOM_0000_SEG.AIM", hdr).astype(np.int8) * 127
    zs = np.flatnonzero(m.reshape(m.shape[0], -1).any(axis=1))
    m[zs[0] : zs[-1] + 1, 5:25, 5:25] = 127  # a second object on every slice of MC2
    aim.write_aim(tmp_path / "two.aim", m, hdr, type="char")
    r = cli_here("measure", cases / "PHANTOM_0000.AIM", tmp_path / "two.aim", "--json")
    assert r.returncode == 0, r.stderr
    qc = json.loads(r.stdout)["qc"]
    assert qc["status"] == "review" and any("separate objects" in x for x in qc["reasons"])
