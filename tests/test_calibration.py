import numpy as np
import pytest

from vbmd_rt.runtime.errors import CalibrationError
from vbmd_rt.runtime.io.aim import read_aim, write_aim
from vbmd_rt.runtime.io.calibration import Calibration, calibration_from_log, from_density, to_density
from vbmd_rt.runtime.io.proclog import parse_log

from .conftest import REFERENCE, SAMPLES, needs_samples


@needs_samples
@pytest.mark.parametrize("name", sorted(k for k, v in REFERENCE.items() if v.get("density_equation")))
def test_density_matches_the_reference_equation(name):
    scan = read_aim(SAMPLES / name)
    m, b = (float(x) for x in REFERENCE[name]["density_equation"].strip("()").split(","))
    v = np.asarray(scan.data).astype(np.float64)
    np.testing.assert_allclose(to_density(scan.data, scan.calibration), v * m + b, rtol=2e-6, atol=2e-3)


@needs_samples
def test_aluminum_sample_has_the_documented_slope():
    cal = read_aim(SAMPLES / "bonelabdata_aluminum.aim").calibration
    assert cal.per_unit == pytest.approx(0.175920, abs=5e-7)
    assert cal.mu_water == pytest.approx(0.2464)


def test_density_round_trip_within_half_a_unit():
    cal = Calibration(8192, 1441.13599, -356.445007, 0.2464)
    v = np.arange(-2000, 12000, 7, dtype=np.int16)
    np.testing.assert_array_equal(from_density(to_density(v, cal), cal), v)


def test_uncalibrated_scan_raises_a_clear_error_where_density_is_needed(tmp_path):
    write_aim(tmp_path / "u.aim", np.zeros((1, 2, 2), np.int16))
    scan = read_aim(tmp_path / "u.aim")
    assert scan.calibration is None
    with pytest.raises(CalibrationError, match="no density calibration") as e:
        to_density(scan.data, scan.calibration, scan.path)
    assert "u.aim" in str(e.value)


def test_incomplete_calibration_is_none():
    assert calibration_from_log(parse_log("Mu_Scaling    8192\nDensity: slope    1441.1\n")) is None
    assert calibration_from_log(parse_log("Mu_Scaling    0\nDensity: slope    1.0\nDensity: intercept   0\n")) is None
