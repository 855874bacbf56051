"""vbmd-rt: fully automatic vBMD of the second metacarpal in HR-pQCT hand scans.

``vbmd_rt.Predictor`` runs the pipeline from Python (see ``vbmd_rt.api``). Subpackages:
``vbmd_rt.runtime`` (the lean side: file I/O, preprocessing, inference backends, postprocessing, vBMD, QC,
reports, the watch service; never imports torch), ``vbmd_rt.synth`` (phantoms), ``vbmd_rt.cohort``
(batches, shards, Dask), ``vbmd_rt.evaluation`` (agreement with expert masks), ``vbmd_rt.export``
(networks, training, ONNX and engine export; torch), ``vbmd_rt.calib`` (INT8 calibration data) and
``vbmd_rt.cli`` (the command line).
"""

__version__ = "0.2.0"

__all__ = ["Predictor", "Result", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import vbmd_rt` (and the CLI's start) does not load numpy, OpenCV or ONNX Runtime.
    if name in ("Predictor", "Result"):
        from vbmd_rt import api

        return getattr(api, name)
    raise AttributeError(f"module 'vbmd_rt' has no attribute {name!r}")
