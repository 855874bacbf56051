"""ONNX export (``vbmd-rt export``): ``model.onnx`` (FP32), ``model.fp16.onnx`` and ``model.json``.

The exported graph is ``sigmoid(net(image))``: input ``image`` (float32), output ``prob`` (float32).
The 2D net has a dynamic batch of 512 x 512 slices; the 3D net dynamic z, y and x (multiples of 16), so
the runtime can feed it the hand's bounding box. ``torch.onnx.export(..., dynamo=True)``.

The FP16 model has FP16 weights and compute, FP32 inputs and outputs, and keeps the normalisation
layers (InstanceNormalization, BatchNormalization) and the final Sigmoid in FP32: casts are inserted
around them. Each export is checked with ONNX Runtime against torch (FP32 to 1e-4 absolute) and FP16
against FP32 (mask Dice) before the card is written.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from vbmd_rt import __version__
from vbmd_rt.export import nets
from vbmd_rt.runtime.io.atomic import atomic_write_bytes
from vbmd_rt.runtime.measure import dice
from vbmd_rt.runtime.model import (
    CARD_FORMAT,
    CARD_NAME,
    ModelCard,
    ModelFile,
    TensorSpec,
    architecture,
    load_model,
    sha256_of,
)

KEEP_FP32 = {"InstanceNormalization", "BatchNormalization", "Sigmoid", "LayerNormalization"}
KEEP_FP32_MODULES = ("InstanceNorm3dStable", "BatchNorm")
INTENDED_USE = (
    "Trained on synthetic HR-pQCT phantoms (vbmd-rt synth), not on patient scans. It must be retrained on "
    "annotated scans of your own scanner before any clinical or research use: "
    "`vbmd-rt train DATA -o RUN && vbmd-rt export RUN/best.pt -o MODEL`."
)


class WithSigmoid(torch.nn.Module):
    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image):
        return torch.sigmoid(self.net(image))


def example_input(arch: str, size: int = 512) -> torch.Tensor:
    a = architecture(arch)
    if a.bone_window:
        return torch.randn(2, a.channels, a.input_px, a.input_px)
    if arch == "unet2d":
        return torch.randn(2, 1, size, size)
    return torch.randn(1, 1, 32, 64, 96)


def export_onnx(net: torch.nn.Module, arch: str, path: Path) -> None:
    """FP32 ONNX of ``sigmoid(net(image))`` with the dynamic axes the runtime uses."""
    model = WithSigmoid(net).eval()
    x = example_input(arch)
    if architecture(arch).window_mode == "slices":
        dyn = {"image": {0: torch.export.Dim("batch", min=1, max=256)}}
    else:
        dyn = {
            "image": {
                2: torch.export.Dim("z16", min=1, max=64) * 16,
                3: torch.export.Dim("y16", min=1, max=64) * 16,
                4: torch.export.Dim("x16", min=1, max=64) * 16,
            }
        }
    with torch.no_grad():
        program = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            input_names=["image"],
            output_names=["prob"],
            dynamic_shapes=dyn,
            verbose=False,
            optimize=True,
        )
    program.save(str(path))


def _keep_fp32(node) -> bool:
    if node.op_type in KEEP_FP32:
        return True
    scope = next((p.value for p in node.metadata_props if p.key == "namespace"), "")
    return any(m in scope for m in KEEP_FP32_MODULES)


def to_fp16(src: Path, dst: Path) -> None:
    """FP16 weights and compute; FP32 I/O; normalisation and the final sigmoid in FP32 between casts.

    Walks the graph in order, tracking each float tensor's precision, and inserts one Cast wherever a
    tensor meets a node of the other precision. Float initialisers and constants used only by FP16
    nodes are stored in FP16; Resize's scales and roi stay FP32 as the operator requires.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
    model = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({i.name: i.data_type for i in g.initializer})
    node_list = list(g.node)
    keep = [_keep_fp32(n) for n in node_list]

    def data_inputs(n):
        return n.input[:1] if n.op_type == "Resize" else n.input

    users: dict[str, list[int]] = {}
    for i, n in enumerate(node_list):
        for x in data_inputs(n):
            users.setdefault(x, []).append(i)
    nonfloat_use = {x for n in g.node if n.op_type == "Resize" for x in n.input[1:]}

    def fp16_only(name: str) -> bool:
        us = users.get(name, [])
        return bool(us) and name not in nonfloat_use and all(not keep[u] for u in us)

    prec: dict[str, int] = {i.name: F32 for i in g.input}
    inits = []
    for init in g.initializer:
        if init.data_type == F32 and fp16_only(init.name):
            init = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name)
        inits.append(init)
        prec[init.name] = init.data_type
    del g.initializer[:]
    g.initializer.extend(inits)

    nodes, casts = [], {}

    def cast(x: str, to: int) -> str:
        if (x, to) not in casts:
            y = f"{x}__as{'16' if to == F16 else '32'}"
            nodes.append(helper.make_node("Cast", [x], [y], to=to, name=f"{y}__cast"))
            casts[(x, to)] = y
        return casts[(x, to)]

    for i, n in enumerate(node_list):
        want = F32 if keep[i] else F16
        new = onnx.NodeProto()
        new.CopyFrom(n)
        if n.op_type == "Constant":
            for a in new.attribute:
                if a.name == "value" and a.t.data_type == F32 and fp16_only(n.output[0]):
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16)))
            for a in new.attribute:
                if a.name == "value":
                    prec[n.output[0]] = a.t.data_type
            nodes.append(new)
            continue
        for k, x in enumerate(n.input):
            if not x or types.get(x) != F32 or (n.op_type == "Resize" and k > 0):
                continue
            if prec.get(x, F32) != want:
                new.input[k] = cast(x, want)
        if n.op_type == "Cast":
            for a in new.attribute:
                if a.name == "to" and a.i == F32:
                    a.i = want
        for o in n.output:
            if types.get(o) == F32:
                prec[o] = want
        nodes.append(new)
    for o in g.output:  # outputs stay FP32
        if prec.get(o.name) == F16:
            tmp = f"{o.name}__fp16"
            for node in nodes:
                node.output[:] = [tmp if y == o.name else y for y in node.output]
                node.input[:] = [tmp if y == o.name else y for y in node.input]
            nodes.append(helper.make_node("Cast", [tmp], [o.name], to=F32, name=f"{o.name}__cast_out"))
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def _ort(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check(net: torch.nn.Module, arch: str, fp32: Path, fp16: Path, samples: list[np.ndarray], threshold: float) -> dict:
    """ORT FP32 vs torch (max abs difference) and FP16 vs FP32 masks (Dice) on ``samples``."""
    s32, s16 = _ort(fp32), _ort(fp16)
    worst, dices = 0.0, []
    model = WithSigmoid(net).eval()
    for x in samples:
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        p32 = s32.run(None, {"image": x})[0]
        p16 = s16.run(None, {"image": x})[0]
        worst = max(worst, float(np.abs(p32 - ref).max()))
        dices.append(dice(p32 > threshold, p16 > threshold))
    return {
        "fp32_vs_torch_max_abs": worst,
        "fp16_vs_fp32_mask_dice_min": float(min(dices)) if dices else None,
        "samples": len(samples),
    }


def check_samples(card: ModelCard, count: int = 2, seed: int = 5) -> list[np.ndarray]:
    """Phantom inputs in model space (the runtime's preprocessing) for the export checks."""
    from vbmd_rt.runtime import preprocess
    from vbmd_rt.synth import phantom

    spec = card.preprocessing
    out = []
    if card.arch.bone_window:
        from vbmd_rt.runtime import bonewin

        for i in range(count):
            p = phantom.sample_case(seed * 1000 + i, "small")
            scan, truth = phantom.render_case(p)
            x = bonewin.inputs_for_check(scan, truth, (p.voxel_mm,) * 3, p.cal)
            out.append(np.ascontiguousarray(x))
        return out
    for i in range(count):
        p = phantom.sample_case(seed * 1000 + i, "small")
        scan, _ = phantom.render_case(p)
        vol, _ = preprocess.to_model(scan, spec, spacing_zyx=(p.voxel_mm,) * 3)
        if card.window.mode == "slices":
            k = vol.shape[0] // 2
            out.append(np.ascontiguousarray(vol[k - 1 : k + 1, None]))
        else:
            z = min(card.window.roi_slices, vol.shape[0] // card.window.multiple * card.window.multiple)
            s = (vol.shape[0] - z) // 2
            out.append(np.ascontiguousarray(vol[None, None, s : s + z]))
    return out


def export(
    checkpoint: str | Path | None,
    out: str | Path,
    extra_card: dict | None = None,
    check_cases: int = 2,
    name: str | None = None,
) -> dict:
    """Export a checkpoint (``None``: the bundled default model) to ``out``; return the card."""
    out = Path(out)
    if checkpoint is None:
        model = load_model(None)
        net = nets.build(model.architecture, model.card.config)
        from vbmd_rt.export.torch_backend import load_onnx_weights

        load_onnx_weights(net, model.onnx("fp32"))
        base = model.card.to_dict()
        base.pop("files", None)
        base.pop("export_checks", None)
    else:
        ck = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
        if "recipe" in ck and "card" not in ck:  # a one-bone segmenter's training checkpoint
            return export_bonewin(Path(checkpoint), out, extra_card, check_cases)
        base = dict(ck["card"])
        net = nets.build(base["architecture"], base.get("config"))
        net.load_state_dict(ck["model"])
    net.eval()
    card = ModelCard.from_dict({**base, **(extra_card or {})}, Path(str(checkpoint or "bundled model")))
    card.format = CARD_FORMAT
    card.name = name or card.name or f"vbmd-rt-mc2-{card.architecture}"
    card.exported_with = {"vbmd_rt": __version__, "torch": torch.__version__}
    card.intended_use = card.intended_use or INTENDED_USE
    arch = card.architecture
    size, mult = card.preprocessing.size, card.arch.multiple
    a = card.arch
    card.input = TensorSpec(
        "image",
        "float32",
        ("batch", a.channels, a.input_px or size, a.input_px or size)
        if card.window.mode == "slices"
        else (1, 1, f"z (multiple of {mult})", f"y (multiple of {mult})", f"x (multiple of {mult})"),
    )
    out_shape = (card.input.shape[0], 1, *card.input.shape[2:]) if a.bone_window else card.input.shape
    card.output = TensorSpec("prob", "float32", out_shape, "probability that the voxel is in MC2")
    card.parameters = nets.count_parameters(net)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
        tmp = Path(tmp)
        export_onnx(net, arch, tmp / "model.onnx")
        to_fp16(tmp / "model.onnx", tmp / "model.fp16.onnx")
        card.export_checks = check(
            net, arch, tmp / "model.onnx", tmp / "model.fp16.onnx", check_samples(card, check_cases), card.threshold
        )
        if card.export_checks["fp32_vs_torch_max_abs"] > 1e-4:
            raise RuntimeError(f"ONNX FP32 differs from torch by {card.export_checks['fp32_vs_torch_max_abs']:.2e}")
        card.files = {
            key: ModelFile(fname, sha256_of(tmp / fname), (tmp / fname).stat().st_size)
            for key, fname in (("fp32", "model.onnx"), ("fp16", "model.fp16.onnx"))
        }
        for fname in ("model.onnx", "model.fp16.onnx"):
            atomic_write_bytes(out / fname, (tmp / fname).read_bytes(), overwrite=True)
    card.write(out / CARD_NAME)
    return card.to_dict()


def export_untrained(arch: str, out: str | Path, seed: int = 0) -> dict:
    """A randomly initialised ``arch`` exported with a complete card: for latency benchmarks and engine-build
    tests, where the weights do not matter. The card says it is untrained."""
    from vbmd_rt.runtime.preprocess import MODEL_SPACING_MM, Spec

    a = architecture(arch)
    torch.manual_seed(seed)
    net = nets.build(arch)
    card = ModelCard(
        arch,
        Spec(size=512, spacing_mm=MODEL_SPACING_MM, z_mode=a.z_mode, multiple=a.multiple, crop=a.crop),
        config=getattr(net, "config", None),
        intended_use="UNTRAINED: random weights, for latency benchmarks only",
    ).to_dict()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".untrained-") as tmp:
        ck = Path(tmp) / "untrained.pt"
        torch.save({"card": card, "model": net.state_dict()}, ck)
        return export(ck, out, check_cases=1, name=f"untrained-{arch}")


def export_bonewin(last: Path, out: Path, record: dict | None = None, check_cases: int = 2) -> dict:
    """``last.pt`` of a training run -> ``out``: FP32 and FP16 ONNX and the model card (``export.onnx_export``)."""
    from vbmd_rt.export.bonewin import WIDTHS
    from vbmd_rt.runtime import bonewin

    ck = torch.load(last, weights_only=False, map_location="cpu")
    widths = list(ck.get("recipe", {}).get("widths", WIDTHS))
    card = {
        "architecture": "bonewin2d",
        "name": "vbmd-rt-mc2-bonewin2d-phantom",
        "preprocessing": bonewin.GRID.to_dict(),
        "threshold": 0.5,
        "config": {"widths": widths},
        "description": (
            "One-bone segmenter: MC2's periosteal envelope in a 39 mm window centred on the bone that the "
            "identification stage named; 2D with five context slices and the identified region as inputs"
        ),
        "training": {k: v for k, v in (record or {}).items() if k != "history"},
        "training_data": {
            k: (record or {})[k]
            for k in ("recipe", "families", "held_out", "steps", "train_minutes", "hardware", "init")
            if k in (record or {})
        },
    }
    tmp = out.parent / (out.name + ".ckpt.pt")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"card": card, "model": ck["net"]}, tmp)
    try:
        return export(tmp, out, check_cases=check_cases, name=card["name"])
    finally:
        tmp.unlink(missing_ok=True)
