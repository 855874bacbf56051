"""The torch side: networks (``nets``), training (``train``, data in ``data``), ONNX export
(``onnx_export``) and the PyTorch backend (``torch_backend``).

Its modules import torch at the top: importing this package is cheap, importing any of its modules loads
torch. Engines are built by ``vbmd_rt.runtime.inference.engines`` (from the exported ONNX, no torch).
"""
