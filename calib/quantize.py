"""INT8 with explicit Q/DQ nodes (NVIDIA ModelOpt), gated on agreement with FP32.

``int8_onnx`` quantises the model's FP32 ONNX with the calibration inputs from ``vbmd-rt calib``
(ModelOpt's ``modelopt.onnx.quantization``, the ``int8`` extra), then runs FP32 and INT8 on the held-out
inputs with ONNX Runtime (which executes Q/DQ graphs on the CPU) and keeps the INT8 ONNX only when every
held-out mask agrees with FP32 at Dice >= 0.99; otherwise it says how far off it is and returns None.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vbmd_rt.calib import select
from vbmd_rt.runtime import measure
from vbmd_rt.runtime.inference import engines
from vbmd_rt.runtime.model import Model

MIN_DICE = 0.99


def agreement(fp32: Path, int8: Path, inputs: np.ndarray, threshold: float = 0.5) -> list[float]:
    """Dice of the INT8 mask against the FP32 mask for each input (ONNX Runtime, CPU)."""
    import onnxruntime as ort

    dice = []
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8)]
    for x in inputs:
        a, b = (s.run(None, {s.get_inputs()[0].name: x[None]})[0] for s in sessions)
        dice.append(measure.dice(a > threshold, b > threshold))
    return dice


def int8_onnx(model: Model, calib: str | Path, log=print) -> Path | None:
    arrays, meta = select.load(calib)
    if meta.get("model_sha256") != model.sha256("fp32"):
        log(f"{calib}: made for another model ({meta.get('model')}); run `vbmd-rt calib` with this model")
        return None
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError:
        log(
            "INT8 needs NVIDIA ModelOpt for the Q/DQ quantisation: pip install 'vbmd-rt[int8]' "
            "(nvidia-modelopt[onnx]); the FP16 engine needs nothing more"
        )
        return None
    out = engines.writable_dir(model) / engines.int8_onnx_name(model)
    quantize(
        str(model.onnx("fp32")),
        quantize_mode="int8",
        calibration_data={meta["input"]: arrays[meta["input"]]},
        output_path=str(out),
    )
    dice = agreement(model.onnx("fp32"), out, arrays["heldout"], model.threshold)
    worst = min(dice)
    if worst < MIN_DICE:
        log(
            f"INT8 does not hold accuracy: held-out mask Dice vs FP32 min {worst:.4f} (mean {np.mean(dice):.4f}), "
            f"needs >= {MIN_DICE}; no INT8 engine written. Use the FP16 engine, or calibrate with more cases."
        )
        out.unlink(missing_ok=True)
        return None
    log(f"INT8 agrees with FP32 on {len(dice)} held-out inputs: mask Dice min {worst:.4f}")
    return out
