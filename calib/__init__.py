"""INT8 calibration data selection and quantisation (explicit Q/DQ)."""
