"""File I/O: AIM/ISQ scans and masks, processing logs, density calibration, output names, atomic writes."""
