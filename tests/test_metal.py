"""Metal in a scan (``damage.metal``): in MC2's slices a QC review, in other slices a warning."""

import dataclasses
import json

import numpy as np
import pytest
from scipy import ndimage

from tests.conftest import cli_here
from vbmd_rt.runtime import damage
from vbmd_rt.runtime.io import aim

GRID = 0.25
UNIT = 1000.0  # mg HA/cm³ per network unit
LEVEL = damage.METAL_MG / UNIT  # metal in network units


def _bone_grid() -> tuple[np.ndarray, np.ndarray]:
    """A model-grid volume in network units (mg HA/cm³ / 1000): soft tissue 0.05, a shaft of cortex 1.2 on
    slices 10-49, and its mask."""
    vol = np.full((80, 60, 60), 0.05, np.float32)
    yy, xx = np.mgrid[:60, :60]
    disc = np.hypot(yy - 30, xx - 30) <= 12
    vol[10:50, disc] = 1.2
    mask = np.zeros(vol.shape, bool)
    mask[10:50, disc] = True
    return vol, mask


def test_bone_alone_and_a_hot_voxel_are_no_metal():
    vol, mask = _bone_grid()
    assert damage.metal(vol, GRID, mask, LEVEL) is None
    vol[20, 5, 5] = 9.0  # one voxel: noise, not metal
    assert damage.metal(vol, GRID, mask, LEVEL) is None


def test_metal_beside_mc2_shares_its_slices_and_its_distance_is_measured():
    vol, mask = _bone_grid()
    vol[20:24, 30:33, 48:51] = 6.0  # 6,000 mg HA/cm³, from x 48: 6 voxels (1.5 mm) past the disc's rim at 42
    found = damage.metal(vol, GRID, mask, LEVEL)
    assert found["in_mc2_slices"] and found["slices"] == [20, 23]
    assert found["volume_mm3"] == pytest.approx(36 * GRID**3, abs=0.01)
    assert found["distance_mm"] == pytest.approx(1.5, abs=0.3)
    assert "in MC2's slices" in damage.metal_reason(found)


def test_metal_past_mc2s_slices_is_not_in_them():
    vol, mask = _bone_grid()
    vol[56:60, 30:33, 30:33] = 6.0  # 7 slices (1.75 mm) past the last one: a ring on a finger
    found = damage.metal(vol, GRID, mask, LEVEL)
    assert not found["in_mc2_slices"]
    vol[52:54, 30:33, 30:33] = 6.0  # within 1 mm of it
    assert damage.metal(vol, GRID, mask, LEVEL)["in_mc2_slices"]


def test_metal_in_mc2s_canal_is_no_distance_from_it():
    vol, mask = _bone_grid()
    vol[28:31, 29:32, 29:32] = 6.0  # a screw in the shaft
    assert damage.metal(vol, GRID, mask, LEVEL)["distance_mm"] == 0.0


def test_metal_slices_cover_every_native_slice_of_their_grid_slices():
    found = {"slices": [2, 5]}
    assert damage.native_slices(found, 3.0, 30, turned=False) == [6, 17]  # grid slice 2 holds native 6-8
    assert damage.native_slices(found, 3.0, 30, turned=True) == [12, 23]  # as a stack written fingers first
    assert damage.native_slices({"slices": [8, 9]}, 3.0, 29, turned=False) == [24, 28]  # within the stack


def test_the_level_is_in_mg_ha_per_cm3():
    vol, mask = _bone_grid()
    vol[20:24, 30:33, 48:51] = 2.0  # 2,000 mg HA/cm³: dense, not metal
    assert damage.metal(vol, GRID, mask, LEVEL) is None
    assert damage.metal(vol, GRID, mask, LEVEL / 2) is not None  # in units of 2 g: 4,000 mg HA/cm³


@pytest.fixture(scope="module")
def with_metal(phantoms, tmp_path_factory):
    """PHANTOM_0000 with a steel spot (6,000 mg HA/cm³, radius 1 mm) 2 mm beside MC2's shaft on seven
    slices, and in another copy on seven slices past MC2's tip."""
    d = tmp_path_factory.mktemp("metal")
    s = aim.read_aim(phantoms / "PHANTOM_0000.AIM")
    gt = np.asarray(aim.read_aim(phantoms / "PHANTOM_0000_GT.AIM").data) != 0
    vox = float(s.spacing_zyx[1])
    zs = np.flatnonzero(gt.any(axis=(1, 2)))
    k = int(zs[0] + (zs[-1] - zs[0]) // 3)
    away = ndimage.distance_transform_edt(~gt[k]) * vox
    yy, xx = np.mgrid[: gt.shape[1], : gt.shape[2]]
    ring = np.abs(away - 3.0) < vox  # the spot's centre: 3 mm from the outline, its edge 2 mm
    dark = np.where(ring, ndimage.uniform_filter(np.asarray(s.data[k], np.float32), 9), np.inf)
    y, x = np.unravel_index(int(np.argmin(dark)), dark.shape)  # on the ring, the darkest side (no other bone)
    spot = np.hypot(yy - y, xx - x) * vox <= 1.0
    steel = min(s.calibration.stored(6000.0), np.iinfo(s.data.dtype).max)  # steel saturates the scale
    assert s.calibration.density(steel) > 4000.0
    beside, past = np.array(s.data), np.array(s.data)
    for z in range(k - 3, k + 4):
        beside[z][spot] = steel
    assert zs[-1] + 12 < gt.shape[0], "the phantom's stack ends too soon after MC2's tip"
    for z in range(zs[-1] + 5, zs[-1] + 12):  # over 1 mm past the tip
        past[z][spot] = steel
    hdr = dataclasses.replace(s.header)
    aim.write_aim(d / "beside.AIM", beside, hdr)
    aim.write_aim(d / "past.AIM", past, hdr)
    aim.write_aim(d / "turned.AIM", np.ascontiguousarray(beside[::-1]), hdr)  # written fingers first
    (d / "slices.txt").write_text(f"{k - 3} {k + 3} {beside.shape[0]}")
    return d


def test_metal_beside_mc2_is_reviewed(with_metal, tmp_path):
    r = cli_here("run", with_metal / "beside.AIM", "-o", tmp_path, "-q")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "beside.json").read_text())
    assert res["qc"]["status"] == "review"
    assert any("metal" in x and "in MC2's slices" in x for x in res["qc"]["reasons"])
    assert res["qc"]["metal"]["in_mc2_slices"]
    assert 1.0 <= res["qc"]["metal"]["distance_mm"] <= 3.0
    assert res["d100_mg_ha_cm3"] is not None  # measured, for the reviewer
    # ``measure`` of the same scan with that mask: the same review (one set of limits for run and measure)
    r = cli_here("measure", with_metal / "beside.AIM", tmp_path / "beside_SEG.AIM", "-o", tmp_path / "m")
    assert r.returncode == 0, r.stderr
    again = json.loads((tmp_path / "m" / "beside.json").read_text())
    assert again["qc"]["status"] == "review" and again["qc"]["metal"]["in_mc2_slices"]
    assert any("metal" in x and "in MC2's slices" in x for x in again["qc"]["reasons"])


def test_metal_past_mc2s_tip_is_a_warning_only(with_metal, tmp_path):
    r = cli_here("run", with_metal / "past.AIM", "-o", tmp_path, "-q")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "past.json").read_text())
    assert not any("metal" in x for x in res["qc"]["reasons"])
    assert not res["qc"]["metal"]["in_mc2_slices"]
    assert any("metal" in w and "D100 is not affected" in w for w in res["warnings"])


def test_metal_slices_are_numbered_as_the_file_stores_them(with_metal, tmp_path):
    first, last, nz = (int(v) for v in (with_metal / "slices.txt").read_text().split())
    r = cli_here("run", with_metal / "beside.AIM", with_metal / "turned.AIM", "-o", tmp_path, "-q")
    assert r.returncode == 0, r.stderr
    ahead, turned = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("beside", "turned"))
    assert ahead["qc"]["metal"]["slices"] == [first, last]
    assert turned["identity"]["stack"]["turned"]
    assert turned["qc"]["metal"]["slices"] == [nz - 1 - last, nz - 1 - first]
    assert turned["qc"]["status"] == "review"
