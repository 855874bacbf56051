"""Engines: the TensorRT-RTX build for sm_75 (no GPU needed), plan keys and mismatches, calibration picks;
engine-vs-ONNX-Runtime agreement on a GPU (marked gpu)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import cli_here
from vbmd_rt.calib import quantize, select
from vbmd_rt.runtime.inference import engines
from vbmd_rt.runtime.inference import factory as backends
from vbmd_rt.runtime.model import default_model_dir, load_model
from vbmd_rt.synth import phantom


@pytest.fixture
def model(tmp_path, monkeypatch):
    """A copy of the paper's 3D U-Net (bundled as unet3d) in a writable folder, and an empty engine cache."""
    monkeypatch.setenv("VBMD_RT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    shutil.copytree(default_model_dir().parent / "unet3d", folder, ignore=shutil.ignore_patterns("engines"))
    return load_model(folder)


def test_rtx_build_of_the_one_bone_segmenter_has_its_window_io(tmp_path, monkeypatch):
    pytest.importorskip("tensorrt_rtx")
    monkeypatch.setenv("VBMD_RT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "bonewin"
    shutil.copytree(default_model_dir(), folder, ignore=shutil.ignore_patterns("engines"))
    m = load_model(folder)
    plan, rec = engines.build(m, "rtx", sm="75", log=lambda s: None)
    ((name, shape, _),) = rec["io"]["inputs"]
    assert name == "image" and shape == (-1, 6, 160, 160)
    ((_, lo, opt, hi),) = engines.PlanKey.from_dict(rec["key"]).profile
    assert lo == (1, 6, 160, 160) and opt == (32, 6, 160, 160) and hi == (64, 6, 160, 160)


def test_plans_of_the_bundled_model_go_to_the_engine_cache_not_into_the_package(model, tmp_path):
    bundled = load_model()
    assert engines.is_bundled(bundled) and not engines.is_bundled(model)
    assert engines.writable_dir(bundled) == tmp_path / "cache" / "engines"  # $VBMD_RT_CACHE/engines
    assert engines.writable_dir(model) == model.folder / "engines"  # a model folder the user named


def test_rtx_build_for_sm75_has_the_io_the_runtime_expects(model):
    pytest.importorskip("tensorrt_rtx")
    plan, rec = engines.build(model, "rtx", sm="75", log=lambda s: None)
    assert plan.parent == model.folder / "engines" and plan.stat().st_size > 1_000_000
    assert plan.name.startswith("rtx-sm75-fp16-")
    ((name, shape, dtype),) = rec["io"]["inputs"]
    ((oname, oshape, odtype),) = rec["io"]["outputs"]
    assert name == "image" and oname == "prob"
    assert shape == oshape == (1, 1, -1, -1, -1) and dtype == odtype == "DataType.FLOAT"  # FP32 I/O, FP16 inside
    key = engines.PlanKey.from_dict(rec["key"])
    assert key.compute_capability == "7.5" and key.precision == "fp16" and key.onnx_sha256 == model.sha256("fp16")
    assert key.profile == engines.default_profile(model)
    ((_, lo, opt, hi),) = key.profile
    assert hi == (1, 1, 80, 512, 512) and all(v % 16 == 0 for v in lo[2:] + opt[2:] + hi[2:])
    assert engines.select(model, key)[0] == plan
    again, _ = engines.build(model, "rtx", sm="75", log=lambda s: None)  # cached under its key: not rebuilt
    assert again == plan and plan.stat().st_mtime_ns == again.stat().st_mtime_ns


def test_rtx_build_from_the_command_line(model):
    pytest.importorskip("tensorrt_rtx")
    r = cli_here("export", "--engine", "rtx", "--sm", "75", "--model", model.folder)
    assert r.returncode == 0, r.stderr
    assert "sm_75" in r.stdout and len(list((model.folder / "engines").glob("*.plan"))) == 1
    (plan,) = (model.folder / "engines").glob("*.plan")
    assert str(plan) in r.stdout  # every build says where its plan is
    r = cli_here("export", "--engine", "rtx", "--sm", "90", "--model", model.folder)
    assert r.returncode == 2 and "--sm 90" in r.stderr and "Traceback" not in r.stderr


def _fake_plan(model, key: engines.PlanKey) -> Path:
    d = model.folder / "engines"
    d.mkdir(exist_ok=True)
    p = d / key.filename()
    p.write_bytes(b"not a real plan")
    (d / (p.name + ".json")).write_text(json.dumps({"key": key.to_dict()}))
    return p


def test_plan_keys_and_mismatch_messages(model):
    prof = engines.default_profile(model)
    here = engines.PlanKey("rtx", "1.7.1.116", "7.5", model.sha256("fp16"), "fp16", prof)
    other_version = engines.PlanKey("rtx", "1.6.0", "7.5", model.sha256("fp16"), "fp16", prof)
    other_gpu = engines.PlanKey("rtx", "1.7.1.116", "8.6", model.sha256("fp16"), "fp16", prof)
    assert len({here.digest(), other_version.digest(), other_gpu.digest()}) == 3
    assert engines.PlanKey.from_dict(json.loads(json.dumps(here.to_dict()))) == here
    plan, why = engines.select(model, here)
    assert plan is None and "no tensorrt-rtx engine" in why
    _fake_plan(model, other_version)
    _fake_plan(model, other_gpu)
    plan, why = engines.select(model, here)
    assert plan is None and "trt_version 1.6.0 (plan) vs 1.7.1.116 (here)" in why and "compute_capability 8.6" in why
    assert _fake_plan(model, here) == engines.select(model, here)[0]
    # Plans of another ONNX (a re-exported model) are not this model's.
    stale = engines.PlanKey("rtx", "1.7.1.116", "7.5", "0" * 64, "fp16", prof)
    _fake_plan(model, stale)
    assert all(k.onnx_sha256 != "0" * 64 for _, k in engines.plans(model))
    assert engines.rebuild_command(model, "rtx", "8.6") == f"vbmd-rt export --engine rtx --sm 86 --model {model.folder}"


def test_tensorrt_backends_without_a_gpu_say_so(tmp_path):
    import numpy as np

    from vbmd_rt.runtime.io.aim import write_aim

    write_aim(tmp_path / "x.AIM", np.zeros((4, 8, 8), np.int16))  # an input that exists: the backend is the problem
    r = cli_here("run", tmp_path / "x.AIM", "-o", tmp_path / "o", "--backend", "tensorrt-rtx", "-q")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert ("needs a CUDA GPU" in r.stderr) or ("not installed" in r.stderr)
    if backends.cuda_device_count() == 0:
        be = backends.create("auto", load_model(None), "auto")
        assert be.name == "onnxruntime-cpu" and "tensorrt-rtx" in be.reason


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    d = tmp_path_factory.mktemp("calib")
    phantom.synth(d, 5, seed=81)
    yield d
    shutil.rmtree(d, ignore_errors=True)  # 0.35 GB: gone when the module is done, not at the session's end


def test_calibration_picks_spread_over_cases_positions_and_grades(scans):
    files = sorted(scans.glob("PHANTOM_????.AIM"))
    p = select.plan(files, count=12, heldout=0.25, seed=1)
    calib = dict(p["calibration"])
    assert not set(calib) & set(p["heldout"]) and len(p["heldout"]) == 1
    assert sum(len(v) for v in calib.values()) == 12 and len(calib) == 4  # every calibration case is used
    counts = [len(v) for v in calib.values()]
    grades = {select._grade(f) for f in calib}
    assert min(counts) >= 2  # every calibration case gives several inputs...
    assert len(grades) > 1  # ...and the picks span motion grades (grades are balanced, not cases)
    for pos in calib.values():  # spread along the scan, not bunched
        if len(pos) >= 3:
            assert max(pos) - min(pos) > 0.4
    with pytest.raises(select.VbmdInputError, match="at least two"):
        select.plan(files[:1], 4)


def test_calib_file_and_int8_gate(scans, tmp_path):
    out = tmp_path / "calib.npz"
    r = cli_here("calib", scans, "-o", out, "-n", "6")
    assert r.returncode == 0, r.stderr
    arrays, meta = select.load(out)
    # The bundled one-bone segmenter: its window inputs (five slices in density / 1000, the prior).
    assert arrays["image"].shape == (6, 6, 160, 160) and arrays["heldout"].shape[0] == 3
    assert meta["model_sha256"] == load_model(None).sha256("fp32") and len(meta["picks"]) == 6
    assert np.isfinite(arrays["image"]).all() and abs(float(arrays["image"].mean())) < 3
    assert 0 <= arrays["image"][:, -1].min() and arrays["image"][:, -1].max() <= 1  # the prior channel
    # The gate itself: FP32 against itself agrees perfectly; the agreement runs on the held-out inputs.
    m = load_model(None)
    assert quantize.agreement(m.onnx("fp32"), m.onnx("fp32"), arrays["heldout"][:1]) == [1.0]
    msgs = []
    result = quantize.int8_onnx(m, out, log=msgs.append)
    try:
        import modelopt  # noqa: F401
    except ImportError:
        assert result is None and "vbmd-rt[int8]" in msgs[-1]
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"nope")
    with pytest.raises(select.VbmdInputError, match="calibration file"):
        select.load(bad)


@pytest.mark.gpu
def test_engine_masks_match_onnxruntime_cpu(scans, tmp_path, monkeypatch):
    """On an RTX GPU (TensorRT-RTX, sm_75 and up) or with classic TensorRT: the engine's masks against
    ONNX Runtime on the CPU, Dice >= 0.999. The plan goes to the engine cache, where the runtime looks."""
    if backends.cuda_device_count() == 0:
        pytest.skip("no CUDA GPU")
    from vbmd_rt.runtime import measure, pipeline
    from vbmd_rt.runtime.inference.base import installed
    from vbmd_rt.runtime.io import aim

    monkeypatch.setenv("VBMD_RT_CACHE", str(tmp_path / "cache"))
    m = load_model(None)
    name = "tensorrt" if installed("tensorrt") else "tensorrt-rtx"
    if not installed(engines.MODULES["trt" if name == "tensorrt" else "rtx"]):
        pytest.skip("neither tensorrt nor tensorrt_rtx is installed")
    if name == "tensorrt-rtx":
        cc = engines.gpu_compute_capability()
        if cc is None or cc.replace(".", "") not in engines.SM_CHOICES:
            pytest.skip(f"TensorRT-RTX has no target for compute capability {cc}")
        plan, _ = engines.build(m, "rtx", sm=cc.replace(".", ""), out_dir=engines.cache_dir(), log=lambda s: None)
        assert plan.parent in engines.search_dirs(m)
    with backends.create(name, m, "cuda") as gpu, backends.create("onnxruntime", m, "cpu") as cpu:
        for f in sorted(scans.glob("PHANTOM_????.AIM"))[:3]:
            s = aim.read_aim(f)
            a, _ = pipeline.segment(s.data, m, gpu, spacing_zyx=s.header.element_size_mm[::-1])
            b, _ = pipeline.segment(s.data, m, cpu, spacing_zyx=s.header.element_size_mm[::-1])
            assert measure.dice(a, b) >= 0.999
