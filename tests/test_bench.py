"""`vbmd-rt bench`: the report's structure on a small phantom, and the FLOP count against PyTorch's."""

import json
import subprocess
import sys

import pytest

from vbmd_rt.bench import suite
from vbmd_rt.runtime.model import load_model


def test_flops_of_the_bundled_net_match_torch():
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    from vbmd_rt.export import nets

    model = load_model("unet3d")
    net = nets.build(model.architecture, model.card.config).eval()
    shape = (1, 1, 16, 64, 96)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(torch.zeros(shape))
    cost = suite.onnx_cost(model.onnx("fp32"), shape)
    assert cost["flops"] == pytest.approx(fc.get_total_flops(), rel=0.01)
    assert cost["activation_bytes"] > 2 * 4 * 16 * 64 * 96


def test_bench_small_report(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vbmd_rt",
            "bench",
            "--size",
            "small",
            "--runs",
            "2",
            "--warmup",
            "0",
            "--backends",
            "onnxruntime",
            "--no-2d",
            "--cache",
            tmp_path / "cache",
            "-o",
            out,
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    st = rep["stages"]["onnxruntime"]
    assert st["runs"] == 2 and st["median"]["total"] > 0 and st["min"]["total"] <= st["max"]["total"]
    assert set(suite.STAGES) <= set(st["median"]) and st["median"]["peak_rss_bytes"] > 0
    assert st["ratio_to_paper_3d"] == pytest.approx(st["median"]["total"] / 32.98)
    assert 0 < st["floor"]["floor_s"] < st["median"]["total"]
    fl, tp = st["floor"], rep["throughput"]  # the floor: the longest of reading, hashing and one pass
    assert fl["floor_s"] == max(fl["io_s"], fl["hash_s"], fl["compute_s"]) and tp["sha256_gb_s"] > 0
    assert fl["hash_s"] == pytest.approx(rep["scan"]["bytes"] / (tp["sha256_gb_s"] * 1e9))
    assert 0 < st["median"]["written_bytes"] < rep["scan"]["bytes"]  # run-length masks, a JSON, a picture
    assert rep["machine"]["cores"] >= 1 and rep["throughput"]["memory_copy_gb_s"] > 0
    assert "vs 33 s" in r.stdout and "3D net" in r.stdout
    assert rep["network"]["unet3d"]["onnxruntime-cpu"]["per_window_s"]["median"] > 0


def test_training_throughput_is_measured_per_architecture():
    pytest.importorskip("torch")
    from vbmd_rt.bench import train_speed

    r = train_speed.run(archs=("bonewin2d",), steps=1, log=lambda s: None)["bonewin2d"]
    assert r["input"] == [24, 6, 160, 160] and r["parameters"] > 100_000
    assert r["steps_per_s"] > 0 and r["output_voxels_per_s"] == pytest.approx(
        24 * 160 * 160 / r["seconds_per_step"], rel=0.01
    )
