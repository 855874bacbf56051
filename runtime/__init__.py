"""The lean runtime: AIM/ISQ I/O, calibration, preprocessing, inference, postprocessing, vBMD.

Never imports torch. Heavy optional modules (tensorrt, tensorrt_rtx, onnxruntime-gpu,
cuda-python) are imported lazily inside the code that needs them.
"""

from vbmd_rt import __version__

__all__ = ["__version__"]
