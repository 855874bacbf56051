"""vbmd-rt: fully automatic vBMD of the second metacarpal in HR-pQCT hand scans.

Subpackages: ``vbmd_rt.runtime`` (the lean side: file I/O, preprocessing, inference backends,
postprocessing, vBMD; never imports torch), ``vbmd_rt.export`` (networks, training, ONNX and
engine export; torch) and ``vbmd_rt.calib`` (INT8 calibration data).
"""

__version__ = "0.1.0"
