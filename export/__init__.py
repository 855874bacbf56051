"""The torch side: networks, training, ONNX export and TensorRT engine builds.

Imports torch lazily inside its modules, so ``import vbmd_rt.export`` stays cheap.
"""
