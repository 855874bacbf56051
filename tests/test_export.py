"""The torch side: networks, training, ONNX export (FP32 and FP16) and the model card."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.conftest import cli_here, phantom_copies  # noqa: E402
from vbmd_rt.export import nets  # noqa: E402
from vbmd_rt.export.onnx_export import export  # noqa: E402
from vbmd_rt.export.train import TrainConfig, train  # noqa: E402
from vbmd_rt.runtime.model import load_model  # noqa: E402
from vbmd_rt.synth import phantom  # noqa: E402


def test_unet2d_is_the_resnet34_unet():
    net = nets.UNet2D()
    assert round(nets.count_parameters(net) / 1e6, 1) == 24.4
    with torch.no_grad():
        assert net.eval()(torch.zeros(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_unet3d_shapes_and_size():
    net = nets.UNet3D().eval()
    assert nets.count_parameters(net) < 200_000
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 16, 32, 48)).shape == (1, 1, 16, 32, 48)


def test_resnet34_init_sums_rgb_kernels(tmp_path):
    donor = nets.ResNetEncoder(in_channels=3)
    path = tmp_path / "resnet34.pth"
    state = {**donor.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save(state, path)
    net = nets.UNet2D()
    assert nets.load_resnet34(net, path) == []
    assert torch.allclose(net.encoder.conv1.weight, donor.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(net.encoder.layer3[0].conv1.weight, donor.layer3[0].conv1.weight)


# The training tests run on a 4x coarser model grid (128 px of 0.984 mm instead of 512 of 0.246): what they
# check (checkpoints, card, resume, export, the run with the exported model) does not depend on the grid,
# and a 3D U-Net step on 512 x 512 x 32 voxels takes tens of seconds on 2 CPU cores.
SMALL_GRID = {"size": 128, "spacing_mm": 0.984}
# ... and a three-level 3D U-Net (widths 2, 4, 8): the export's torch.export pass takes 12 s for it against 22 s for
# the bundled five levels. The same code exports both; the five levels' export, whose windows need multiples of
# 16 where three levels need 4, is ``test_the_five_level_unet3d_exports_with_windows_of_sixteen`` (-m slow).
SMALL_NET = {**SMALL_GRID, "widths": [2, 4, 8]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("phantoms")
    phantom.synth(d, 4, seed=5)
    run = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(
        data=str(d), out=str(run), epochs=1, steps_per_epoch=2, window=32, max_val_cases=1, seed=3, **SMALL_NET
    )
    return d, run, train(cfg, log=lambda s: None)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The trained checkpoint exported once (FP32, FP16, card): the export tests read it."""
    out = tmp_path_factory.mktemp("exported") / "model"
    return out, export(trained[2], out)


def test_fp16_keeps_norm_and_sigmoid_in_fp32(exported):
    import onnx

    m = onnx.load(str(exported[0] / "model.fp16.onnx"))
    types = {v.name: v.type.tensor_type.elem_type for v in [*m.graph.value_info, *m.graph.output, *m.graph.input]}
    conv_inputs = {n.input[1] for n in m.graph.node if n.op_type == "Conv"}
    conv_w = [i for i in m.graph.initializer if i.name in conv_inputs]
    assert conv_w and all(i.data_type == onnx.TensorProto.FLOAT16 for i in conv_w)
    assert types["image"] == types["prob"] == onnx.TensorProto.FLOAT
    sig = [n for n in m.graph.node if n.op_type == "Sigmoid"][0]
    assert types[sig.input[0]] == onnx.TensorProto.FLOAT
    means = [n for n in m.graph.node if n.op_type == "ReduceMean"]
    assert means and all(types[n.output[0]] == onnx.TensorProto.FLOAT for n in means)


def test_training_writes_checkpoints_and_card(trained):
    _, run, best = trained
    assert best.exists() and (run / "last.pt").exists()
    card = json.loads((run / "train.json").read_text())
    assert card["architecture"] == "unet3d" and card["preprocessing"]["std"] > 0
    assert card["training"]["cases"] == {"train": 2, "val": 1, "test": 1}
    assert len(card["training"]["history"]) == 1


def test_training_resumes(trained):
    d, run, _ = trained
    cfg = TrainConfig(
        data=str(d), out=str(run), epochs=2, steps_per_epoch=2, window=32, max_val_cases=1, seed=3, **SMALL_NET
    )
    train(cfg, resume=str(run / "last.pt"), log=lambda s: None)
    card = json.loads((run / "train.json").read_text())
    assert [h["epoch"] for h in card["training"]["history"]] in ([0, 1], [0])


@pytest.mark.slow
def test_training_is_deterministic_on_cpu(tmp_path, trained):
    d, _, _ = trained
    weights = []
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two threads, as a user's run has: under xdist a worker has one (conftest)
    try:
        for k in range(2):
            cfg = TrainConfig(
                data=str(d),
                out=str(tmp_path / f"r{k}"),
                epochs=1,
                steps_per_epoch=2,
                window=32,
                max_val_cases=1,
                seed=3,
                device="cpu",
                **SMALL_NET,
            )
            best = train(cfg, log=lambda s: None)
            weights.append(torch.load(best, weights_only=False)["model"])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_export_checks_and_runs(trained, exported, tmp_path):
    d, _, _ = trained
    folder, card = exported
    assert card["export_checks"]["fp32_vs_torch_max_abs"] <= 1e-4
    assert card["export_checks"]["fp16_vs_fp32_mask_dice_min"] >= 0.99  # untrained: probabilities near 0.5
    m = load_model(folder)
    assert m.onnx("fp32").stat().st_size < 10 * 2**20 and m.onnx("fp16").exists()
    r = cli_here("run", d / "PHANTOM_0000.AIM", "-o", tmp_path / "out", "--model", folder, "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "out" / "PHANTOM_0000.json").read_text())["model"]["sha256"] == m.sha256("fp32")
    # the torch backend loads every weight of the export back (a deep-supervision head the net never used would
    # be missing from the ONNX)
    r = cli_here("run", d / "PHANTOM_0000.AIM", "-o", tmp_path / "torch", "--model", folder, "--backend", "torch", "-q")
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_the_five_level_unet3d_exports_with_windows_of_sixteen(tmp_path):
    """The bundled depth (five levels, ``UNET3D_WIDTHS``) exported untrained: its card asks for windows of
    multiples of 16, which its ONNX runs, and a window of another size is refused by the graph."""
    import onnxruntime as ort

    from vbmd_rt.export.onnx_export import export_untrained

    card = export_untrained("unet3d", tmp_path / "m")
    assert card["config"]["widths"] == list(nets.UNET3D_WIDTHS) and card["preprocessing"]["multiple"] == 16
    s = ort.InferenceSession(str(tmp_path / "m" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert s.run(None, {"image": np.zeros((1, 1, 16, 32, 48), np.float32)})[0].shape == (1, 1, 16, 32, 48)
    with pytest.raises(Exception):  # noqa: B017 - ONNX Runtime's own error types
        s.run(None, {"image": np.zeros((1, 1, 20, 36, 44), np.float32)})


def test_bundled_model_fp16_agrees_with_fp32():
    import onnxruntime as ort

    from vbmd_rt.export.onnx_export import check_samples

    m = load_model()
    s32 = ort.InferenceSession(str(m.onnx("fp32")), providers=["CPUExecutionProvider"])
    s16 = ort.InferenceSession(str(m.onnx("fp16")), providers=["CPUExecutionProvider"])
    for x in check_samples(m.card, 1, seed=11):
        a, b = s32.run(None, {"image": x})[0] > 0.5, s16.run(None, {"image": x})[0] > 0.5
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.999


def test_tampered_model_is_refused(tmp_path):
    import shutil

    from vbmd_rt.runtime.model import ModelError

    shutil.copytree(load_model().folder, tmp_path / "m")
    with open(tmp_path / "m" / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match="sha256"):
        load_model(tmp_path / "m").onnx("fp32")
    assert np.isfinite(load_model().spec.std)


def test_torch_backend_runs_the_bundled_models_like_onnxruntime(phantoms, tmp_path):
    """`run --backend torch` loads the exported weights and gives the masks ONNX Runtime gives: the 3D
    U-Net's (the norms' folded affine parameters found through the exporter's name scopes) and the default
    one-bone segmenter's (its batch norms folded into the convolutions, unfolded as identities)."""
    from vbmd_rt.runtime import measure
    from vbmd_rt.runtime.io import aim

    phantom_copies(phantoms, tmp_path / "in", 1)
    for model in ("unet3d", "default"):
        for backend in ("torch", "onnxruntime"):
            out = tmp_path / f"{model}-{backend}"
            r = cli_here("run", tmp_path / "in", "-o", out, "--backend", backend, "--model", model, "-q")
            assert r.returncode == 0, r.stderr
        a = aim.read_aim(tmp_path / f"{model}-torch" / "PHANTOM_0000_SEG.AIM").data
        b = aim.read_aim(tmp_path / f"{model}-onnxruntime" / "PHANTOM_0000_SEG.AIM").data
        assert measure.dice(a, b) > 0.999


@pytest.mark.slow  # an ONNX export of its own (about 30 s)
def test_torch_backend_reads_a_folded_unet2d_back(tmp_path):
    """The 2D U-Net's ONNX, like the one-bone segmenter's, has its batch norms folded into the convolutions
    (the ResNet blocks' ``bn1``/``bn2`` are attributes, not ``Sequential`` entries): the torch backend reads
    it back and computes what ONNX Runtime computes, with batch norms whose statistics are not the identity's."""
    from vbmd_rt.export.onnx_export import export
    from vbmd_rt.export.torch_backend import TorchBackend
    from vbmd_rt.runtime.model import ModelCard, architecture
    from vbmd_rt.runtime.preprocess import MODEL_SPACING_MM, Spec

    torch.manual_seed(0)
    config = {"blocks": [1, 1, 1, 1], "widths": [4, 4, 8, 8, 16], "decoder": [16, 8, 8, 4, 4]}
    net = nets.build("unet2d", config)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    a = architecture("unet2d")
    spec = Spec(size=512, spacing_mm=MODEL_SPACING_MM, z_mode=a.z_mode, multiple=a.multiple, crop=a.crop)
    card = ModelCard("unet2d", spec, config=config).to_dict()
    torch.save({"card": card, "model": net.state_dict()}, tmp_path / "ck.pt")
    export(tmp_path / "ck.pt", tmp_path / "m", check_cases=1)
    model = load_model(tmp_path / "m")
    assert model.card.arch.name == "unet2d"
    backend = TorchBackend.from_model(model, "cpu")  # raises where the weights read back differ from the ONNX
    x = np.random.default_rng(1).standard_normal((1, 1, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = torch.sigmoid(net.eval()(torch.from_numpy(x))).numpy()
    backend.activate()
    try:
        assert np.abs(backend.infer(x) - want).max() < 1e-4
    finally:
        backend.deactivate()
    # the modules stay: a warm start can train on
    assert sorted(backend.module.state_dict()) == sorted(net.state_dict())
