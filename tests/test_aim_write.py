"""Writing AIMs: bit-exact round trips, headers and logs kept, aimio-py reads what we write."""

import numpy as np
import pytest

from vbmd_rt.runtime.io.aim import AimHeader, read_aim, write_aim

from .conftest import SAMPLES, needs_samples

TYPES = ["int16", "char", "binary-rle"]


def _volume(kind: str, rng) -> np.ndarray:
    if kind == "int16":
        return rng.integers(-32768, 32767, size=(7, 11, 13), dtype=np.int16)
    z, y, x = np.mgrid[:7, :11, :13]
    ball = (z - 3) ** 2 + (y - 5) ** 2 + (x - 6) ** 2 < 16
    return np.where(ball, 127, 0).astype(np.int8)


def _template(version: int, kind: str = "int16") -> AimHeader:
    # Compressed binaries carry no offset border (AimIO asserts on one), the others do.
    offset = (0, 0, 0) if kind == "binary-rle" else (2, 3, 4)
    return AimHeader(
        version=version,
        type_code=0x00020002,
        dim=(1, 1, 1),
        position=(684, 702, 9),
        offset=offset,
        element_size_mm=(0.082, 0.082, 0.082),
        processing_log="! Processing Log\nMu_Scaling                     8192\n",
    )


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("kind", TYPES)
def test_round_trip_is_bit_exact_with_header_kept(tmp_path, kind, version):
    data = _volume(kind, np.random.default_rng(1))
    tmpl = _template(version, kind)
    path = tmp_path / f"x_{kind}.aim"
    written = write_aim(path, data, tmpl, type=kind, log_entry="test round trip")
    back = read_aim(path)
    np.testing.assert_array_equal(np.asarray(back.data), data)
    assert back.data.dtype == data.dtype
    h = back.header
    assert h.version == version
    assert h.type_name == kind
    assert h.position == tmpl.position and h.offset == tmpl.offset
    assert h.element_size_mm == pytest.approx(tmpl.element_size_mm, rel=1e-7)
    assert h.processing_log.startswith(tmpl.processing_log)
    assert "vbmd-rt" in h.processing_log and "test round trip" in h.processing_log
    assert written.dim == h.dim


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("kind", TYPES)
def test_aimio_reads_what_we_write(tmp_path, kind, version):
    py_aimio = pytest.importorskip("py_aimio")
    data = _volume(kind, np.random.default_rng(2))
    path = tmp_path / "w.aim"
    tmpl = _template(version, kind)
    write_aim(path, data, tmpl, type=kind, log_entry="aimio check")
    theirs, meta = py_aimio.read_aim(str(path))
    np.testing.assert_array_equal(theirs, data)
    assert tuple(meta["position"]) == (684, 702, 9)
    assert tuple(meta["offset"]) == tmpl.offset
    assert meta["version"] == version
    assert tuple(meta["dimensions"]) == (13, 11, 7)
    assert meta["element_size"] == pytest.approx((0.082,) * 3, rel=1e-6)
    assert meta["processing_log"]["Mu_Scaling"] == 8192


@needs_samples
@pytest.mark.parametrize(
    "name", ["bonelabdata_aluminum.aim", "bonelabdata_XT2_RADIUS_82_SEG.AIM", "aimiopy_DB_07_DNN_DR_T1_TRAB_MASK.AIM"]
)
def test_rewriting_a_scanner_file_keeps_values_version_geometry_and_log(tmp_path, name):
    src = read_aim(SAMPLES / name)
    out = tmp_path / "copy.aim"
    write_aim(out, np.asarray(src.data), src.header, type=src.header.type_name, log_entry="copy")
    back = read_aim(out)
    np.testing.assert_array_equal(np.asarray(back.data), np.asarray(src.data))
    for f in ("version", "position", "offset", "element_size_mm", "supdim", "suppos", "subdim", "testoff", "type_code"):
        assert getattr(back.header, f) == getattr(src.header, f), f
    assert back.header.processing_log.startswith(src.header.processing_log.rstrip("\0"))
    assert back.header.calibration == src.header.calibration


@needs_samples
def test_binary_mask_written_is_as_small_as_the_scanners(tmp_path):
    src = read_aim(SAMPLES / "bonelabdata_XT2_RADIUS_82_SEG.AIM")
    out = tmp_path / "seg.aim"
    write_aim(out, np.asarray(src.data), src.header, type="binary-rle")
    assert out.stat().st_size <= 1.01 * (SAMPLES / "bonelabdata_XT2_RADIUS_82_SEG.AIM").stat().st_size


def test_boolean_masks_become_0_and_127(tmp_path):
    m = np.zeros((2, 3, 4), bool)
    m[1, 1, 1:3] = True
    write_aim(tmp_path / "m.aim", m, type="char")
    back = np.asarray(read_aim(tmp_path / "m.aim").data)
    assert set(np.unique(back)) == {0, 127} and back.sum() == 254


def test_write_is_atomic_and_respects_overwrite(tmp_path):
    from vbmd_rt.runtime.errors import OutputError

    p = tmp_path / "a.aim"
    write_aim(p, np.zeros((1, 2, 2), np.int16))
    with pytest.raises(OutputError):
        write_aim(p, np.ones((1, 2, 2), np.int16), overwrite=False)
    assert np.asarray(read_aim(p).data).sum() == 0
    assert [x.name for x in tmp_path.iterdir()] == ["a.aim"]  # no temporary files left


def test_int16_writer_refuses_values_out_of_range(tmp_path):
    with pytest.raises(ValueError):
        write_aim(tmp_path / "x.aim", np.full((1, 1, 2), 70000, np.int32), type="int16")
    assert not list(tmp_path.iterdir())


def test_binary_rle_with_an_offset_border_is_refused(tmp_path):
    with pytest.raises(ValueError, match="offset"):
        write_aim(tmp_path / "b.aim", np.zeros((2, 2, 2), np.int8), _template(2), type="binary-rle")
    assert not list(tmp_path.iterdir())
