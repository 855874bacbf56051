"""The Python API and the library's contracts: Predictor, the Backend guard, the model card, the window."""

import json
import os
import shutil

import numpy as np
import pytest

import vbmd_rt
from tests.conftest import PeakMemory, cli_here, phantom_copies
from vbmd_rt.runtime.errors import VbmdInputError
from vbmd_rt.runtime.inference import engines
from vbmd_rt.runtime.inference.base import BackendError, InputSpec
from vbmd_rt.runtime.inference.factory import create
from vbmd_rt.runtime.inference.window import WindowSpec, sliding_window
from vbmd_rt.runtime.io import aim
from vbmd_rt.runtime.model import ARCHITECTURES, CARD_NAME, ModelCard, ModelError, load_model


@pytest.fixture(scope="module")
def run_out(phantoms, tmp_path_factory):
    src = phantom_copies(phantoms, tmp_path_factory.mktemp("api-in"), 1)
    out = tmp_path_factory.mktemp("api-out")
    r = cli_here("run", src / "PHANTOM_0000.AIM", "-o", out, "-q")
    assert r.returncode == 0, r.stderr
    return src / "PHANTOM_0000.AIM", out


def test_predictor_on_a_file_gives_what_the_cli_wrote(run_out):
    scan, out = run_out
    written = json.loads((out / "PHANTOM_0000.json").read_text())
    with vbmd_rt.Predictor() as p:
        r = p.run(scan)
    assert r.d100_mg_ha_cm3 == written["d100_mg_ha_cm3"] and r.slices == written["slices"]
    assert r.side == written["side"] and set(r.timings_s) >= {"read", "inference", "total"}
    mask = np.asarray(aim.read_aim(out / "PHANTOM_0000_SEG.AIM").data) > 0
    np.testing.assert_array_equal(r.mask.astype(bool), mask)


def test_predictor_on_an_array_needs_spacing_and_gives_the_same_mask(run_out):
    scan, _ = run_out
    s = aim.read_aim(scan)
    with vbmd_rt.Predictor() as p:
        with pytest.raises(ValueError, match="spacing"):
            p.run(np.asarray(s.data))
        a = p.run(np.asarray(s.data), spacing=s.header.element_size_mm[::-1], calibration=s.calibration)
        b = p.run(scan)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.d100_mg_ha_cm3 == b.d100_mg_ha_cm3


def test_a_backend_runs_only_while_active():
    be = create("onnxruntime", load_model("unet3d"), "cpu")
    x = np.zeros((1, 1, 16, 64, 64), np.float32)
    with pytest.raises(RuntimeError, match="inactive"):
        be.infer(x)
    with be:
        assert be.is_active and be.infer(x).shape == x.shape
        with pytest.raises(RuntimeError, match="already active"):
            be.activate()
    assert not be.is_active
    with pytest.raises(RuntimeError, match="inactive"):
        be.infer(x)


def test_a_backend_refuses_input_outside_its_spec():
    be = create("onnxruntime", load_model("unet3d"), "cpu")
    assert be.input_spec.name == "image" and be.input_spec.max_shape[2] == ARCHITECTURES["unet3d"].window
    with be, pytest.raises(ValueError, match="outside"):
        be.infer(np.zeros((1, 1, 96, 64, 64), np.float32))  # more slices than the window


def test_device_cuda_without_a_gpu_is_an_input_error_not_a_cpu_run(run_out, tmp_path):
    from vbmd_rt.runtime.inference.factory import cuda_device_count

    if cuda_device_count():
        pytest.skip("this machine has a GPU")
    with pytest.raises(BackendError, match="no CUDA GPU"):
        create("auto", load_model(None), "cuda")
    r = cli_here("run", run_out[0], "-o", tmp_path / "o", "--device", "cuda")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--device cpu" in r.stderr
    assert not (tmp_path / "o" / "PHANTOM_0000.json").exists()


def test_a_card_whose_3d_window_the_net_cannot_take_is_refused(phantoms, tmp_path):
    """A 3D net's window and sizes must be multiples of its downsampling (2 ** (levels - 1)): a card giving a
    40-slice window to the five-level U-Net, or a multiple of 8 to it, is refused with one line and exit 2
    when loaded, not when the network's shapes fail mid-scan."""
    m = load_model("unet3d")
    d = json.loads(json.dumps(m.card.to_dict()))
    with pytest.raises(ModelError, match="a 3D window of 40 slices is no multiple of 16"):
        ModelCard.from_dict({**d, "window": {"slices": 40, "overlap": 8}})
    with pytest.raises(ModelError, match="a 5-level net needs sizes in multiples of 16, the card gives 8"):
        ModelCard.from_dict({**d, "preprocessing": {**d["preprocessing"], "multiple": 8}, "window": {"slices": 48}})
    assert ModelCard.from_dict({**d, "window": {"slices": 48, "overlap": 8}}).window.roi_slices == 48
    three = {
        **d,
        "config": {**d["config"], "widths": [2, 4, 8]},
        "preprocessing": {**d["preprocessing"], "multiple": 4},
    }
    assert ModelCard.from_dict({**three, "window": {"slices": 36, "overlap": 4}}).window.roi_slices == 36
    folder = tmp_path / "m"
    shutil.copytree(m.folder, folder)
    (folder / CARD_NAME).write_text(json.dumps({**d, "window": {"slices": 40, "overlap": 8}}))
    r = cli_here("run", phantoms / "PHANTOM_0000.AIM", "-o", tmp_path / "o", "--model", folder, "-q")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no multiple of 16" in r.stderr, r.stderr
    assert not (tmp_path / "o" / "PHANTOM_0000.json").exists()


def test_the_model_card_round_trips_without_machine_paths(tmp_path):
    m = load_model("unet3d")
    d = m.card.to_dict()
    again = ModelCard.from_dict(json.loads(json.dumps(d)))
    assert again == m.card
    assert again.window == WindowSpec("volume", 80, 16, 16)
    bundled = load_model(None).card
    assert ModelCard.from_dict(json.loads(json.dumps(bundled.to_dict()))) == bundled
    assert bundled.window == WindowSpec("slices", 32, 0, 16)
    assert not d["training"]["data"].startswith("/")  # a folder name, not this machine's path
    folder = tmp_path / "m"
    shutil.copytree(m.folder, folder)
    card = ModelCard.read(folder / CARD_NAME)
    card.training = {"data": "/home/someone/scans/train"}
    card.write(folder / CARD_NAME)
    assert json.loads((folder / CARD_NAME).read_text())["training"]["data"] == "train"
    bad = json.loads((folder / CARD_NAME).read_text())
    bad["architecture"] = "unet4d"
    (folder / CARD_NAME).write_text(json.dumps(bad))
    with pytest.raises(ModelError, match="unknown architecture"):
        load_model(folder)


def test_the_sliding_window_blends_windows_of_any_callable():
    vol = np.random.default_rng(0).standard_normal((200, 8, 8)).astype(np.float32)
    calls = []

    def identity(batch):
        calls.append(batch.shape)
        return batch

    out = sliding_window(vol, identity, WindowSpec("volume", 80, 16, 16))
    np.testing.assert_allclose(out, vol, rtol=1e-6, atol=1e-6)  # blending identical values gives them back
    assert all(c == (1, 1, 80, 8, 8) for c in calls) and len(calls) == 3
    short = sliding_window(vol[:21], identity, WindowSpec("volume", 80, 16, 16))
    assert calls[-1] == (1, 1, 32, 8, 8)  # padded to a multiple of 16
    np.testing.assert_array_equal(short, vol[:21])
    slices = sliding_window(vol[:20], identity, WindowSpec("slices", 16))
    assert calls[-1] == (4, 1, 8, 8) and np.array_equal(slices, vol[:20])


def test_int8_plans_are_keyed_by_the_quantised_onnx(tmp_path, monkeypatch):
    monkeypatch.setenv("VBMD_RT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "m"
    shutil.copytree(load_model(None).folder, folder)
    m = load_model(folder)
    with pytest.raises(VbmdInputError, match="no INT8 ONNX"):
        engines.key_for(m, "rtx", "7.5", "int8", version="1.0")
    q = engines.writable_dir(m) / engines.int8_onnx_name(m)
    q.parent.mkdir(parents=True, exist_ok=True)
    q.write_bytes(b"quantised, first calibration")
    first = engines.key_for(m, "rtx", "7.5", "int8", version="1.0")
    fp16 = engines.key_for(m, "rtx", "7.5", "fp16", version="1.0")
    assert first.onnx_sha256 != fp16.onnx_sha256 and first.onnx_sha256 != m.sha256("fp16")
    plan = q.parent / first.filename()  # a stored INT8 plan with its key, as engines.build writes it
    plan.write_bytes(b"plan")
    plan.with_name(plan.name + ".json").write_text(json.dumps({"key": first.to_dict()}))
    assert engines.select(m, first)[0] == plan
    q.write_bytes(b"quantised, second calibration")  # re-calibrated: the old plan must not be reused
    second = engines.key_for(m, "rtx", "7.5", "int8", version="1.0")
    assert second != first and engines.select(m, second)[0] is None


def test_a_local_cluster_pins_one_gpu_per_worker(monkeypatch):
    from vbmd_rt.cohort.batch import pin_worker_gpu

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert pin_worker_gpu(3, 2) == "1" and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert pin_worker_gpu(1, 1) is None and "CUDA_VISIBLE_DEVICES" not in os.environ  # one GPU: nothing to pin
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert pin_worker_gpu(5, 4) == "0"  # the user's own choice is kept


def test_input_spec_checks_rank_and_range():
    spec = InputSpec("image", "float32", (1, 1, 16, 64, 64), (1, 1, 80, 256, 448), (1, 1, 80, 512, 512))
    spec.check((1, 1, 80, 512, 512))
    for bad in ((1, 1, 80, 512), (1, 1, 8, 64, 64), (2, 1, 80, 64, 64)):
        with pytest.raises(ValueError):
            spec.check(bad)


def test_memory_is_predicted_from_the_header_and_refused_past_the_limit(run_out, tmp_path):
    from vbmd_rt.runtime import preprocess, resources

    spec = preprocess.Spec(size=512, spacing_mm=0.246)
    full = resources.estimate_bytes((320, 1536, 1536), (0.082,) * 3, spec)
    assert 2 * 2**30 < full < 6 * 2**30  # a full XtremeCT I scan: a few GiB, as measured by `vbmd-rt bench`
    lying = resources.estimate_bytes((15625, 1, 1), (0.082,) * 3, spec)  # 34 KB claiming a tall column
    assert lying < resources.BASELINE_BYTES + 2**20
    huge = resources.estimate_bytes((3000, 20000, 20000), (0.082,) * 3, spec)
    with pytest.raises(VbmdInputError, match="GiB of memory"):
        resources.check_memory("x.AIM", (3000, 20000, 20000), (0.082,) * 3, spec, None)
    assert huge > resources.physical_memory()
    with vbmd_rt.Predictor(max_memory=100 * 2**20) as p, pytest.raises(VbmdInputError, match="--max-memory"):
        p.run(run_out[0])
    r = cli_here("run", run_out[0], "-o", tmp_path / "o", "--max-memory", "100M", "-q")
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert r.returncode == 2 and len(errors) == 1 and "PHANTOM_0000.AIM" in errors[0] and "--max-memory" in errors[0]
    assert not list((tmp_path / "o").glob("PHANTOM_0000*"))
    r = cli_here("run", run_out[0], "-o", tmp_path / "never", "--max-memory", "lots")
    assert r.returncode == 2 and not (tmp_path / "never").exists()  # a bad argument creates nothing


def test_one_bone_models_are_not_charged_for_native_copies_of_the_whole_scan():
    """The bundled network and the classical contour write the native mask in a box round MC2 only: an XtremeCT
    II scan of 393 x 2304 x 2304 voxels (3.9 GiB; measured peaks 4.3 and 4.7 GiB) fits a 24 GB machine's limit
    with either. A model of whole slices still counts the whole scan's copies."""
    from vbmd_rt.runtime import pipeline, resources
    from vbmd_rt.runtime.model import load_model

    shape, spacing = (393, 2304, 2304), (0.0607,) * 3
    scan = 2 * 393 * 2304 * 2304
    bundled, classical, slices = (pipeline._memory_model(load_model(m)) for m in (None, "classical", "unet3d"))
    assert bundled[1] and classical == (None, True) and not slices[1]
    for spec, one_bone in (bundled, classical):
        need = resources.estimate_bytes(shape, spacing, spec, one_bone)
        assert scan + 2**30 < need < 8.5 * 2**30
    whole = resources.estimate_bytes(shape, spacing, slices[0], slices[1])
    assert whole > scan + resources.NATIVE_MASK_COPIES * scan // 2
    # outputs that are whole-scan arrays count: a char mask AIM, an export, the classical model's probability file
    assert resources.output_bytes_per_voxel(False, "rle", None) == 0
    extra = resources.output_bytes_per_voxel(True, "char", "nii")
    assert extra == 6
    plain = resources.check_memory("x.AIM", shape, spacing, None, 9 * 2**30, True)
    assert resources.estimate_bytes(shape, spacing, None, True, extra) == plain + extra * 393 * 2304 * 2304
    with pytest.raises(VbmdInputError, match="GiB of memory"):
        resources.check_memory("x.AIM", shape, spacing, None, 9 * 2**30, True, extra)
    small = resources.estimate_bytes((40, 100, 100), (0.246,) * 3, None)  # the box and crop are the scan's at most
    assert small < resources.BASELINE_BYTES + 32 * 2**20


def test_a_sparse_native_mask_goes_to_the_model_grid_a_slice_at_a_time():
    """``to_model_mask`` at a factor that is no integer (60.7 µm to 0.246 mm) compared the whole mask with 0 and
    wrote a native bool array (2 GB for an XtremeCT II stack, the classical model's peak): now slice by slice,
    the same fractions, and the mask's untouched zero pages stay untouched."""
    from vbmd_rt.runtime import preprocess
    from vbmd_rt.runtime.postprocess import sparse_zeros

    rng = np.random.default_rng(3)
    m = (rng.random((37, 101, 97)) > 0.7).astype(np.uint8) * 127
    shape = (11, 29, 31)
    np.testing.assert_array_equal(
        preprocess._resample_zyx(m > 0, shape), preprocess._resample_zyx(m, shape, nonzero=True)
    )

    big = sparse_zeros((100, 2000, 2000))  # 400 MB of zero pages
    big[40:60, 900:1000, 900:1000] = 1
    spec = preprocess.Spec(size=512, spacing_mm=0.246, crop=False)
    grid = preprocess.model_grid(big.shape, spec, (0.0607,) * 3)[0]
    geo = preprocess.Geometry(big.shape, grid, False, (0, grid[1], 0, grid[2]))
    assert 2000 % geo.model_shape[1] != 0  # the slice-by-slice path
    with PeakMemory() as pm:
        frac = preprocess.to_model_mask(big, geo, (40, 60, 900, 1000, 900, 1000))
    assert pm.grown < 150 * 2**20
    assert frac.max() > 0.9 and frac[:, :200].max() == 0


def test_sizes_parse_as_people_write_them():
    from vbmd_rt.runtime.resources import parse_size

    assert parse_size("16G") == 16 * 2**30 and parse_size("512MiB") == 512 * 2**20 and parse_size("1024") == 1024
    for bad in ("", "G", "-1G", "lots"):
        with pytest.raises(ValueError):
            parse_size(bad)
