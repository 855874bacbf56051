"""Inference: the backend interface and base class (``base``), ONNX Runtime (``ort_backend``), TensorRT and
TensorRT-RTX (``trt_backend``, plans and their keys in ``engines``), choosing one (``factory.create``), and
the sliding window that feeds any of them (``window``)."""
