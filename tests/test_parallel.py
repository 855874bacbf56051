"""The stages' own threads (runtime.parallel): the same numbers on one thread as on several, errors raised,
``--threads`` honoured."""

import threading

import numpy as np
import pytest

from vbmd_rt.runtime import compartments, parallel, preprocess
from vbmd_rt.runtime.io.calibration import Calibration


@pytest.fixture
def one_thread():
    yield lambda: parallel.set_threads(1)
    parallel.set_threads(None)


def test_each_runs_every_item_and_raises_the_first_error_after_all_ended(one_thread):
    parallel.set_threads(None)  # another test's backend may have set a limit in this process
    seen = []

    def work(i):
        seen.append(i)
        if i in (3, 5):
            raise ValueError(f"item {i}")

    if parallel.cores() >= 2:  # on threads: every call ends before the first error is raised
        with pytest.raises(ValueError, match="item 3"):
            parallel.each(work, range(8), 2)
        assert sorted(seen) == list(range(8))
    seen.clear()
    one_thread()  # in this thread: the first error stops the loop
    with pytest.raises(ValueError, match="item 3"):
        parallel.each(work, range(8))
    assert seen == [0, 1, 2, 3]
    parallel.each(lambda i: None, [])  # nothing to do


def test_set_threads_bounds_the_workers(one_thread):
    one_thread()
    assert parallel.cores() == 1
    names = set()
    parallel.each(lambda i: names.add(threading.current_thread().name), range(6))
    assert names == {threading.current_thread().name}  # one worker: this thread
    parallel.set_threads(None)
    assert parallel.cores() >= 1


def _volume(seed=0):
    rng = np.random.default_rng(seed)
    v = rng.normal(300, 80, size=(70, 96, 120)).astype(np.int16)
    v[20:60, 30:70, 40:90] += 900
    return v


def test_resampling_on_threads_equals_one_thread(one_thread):
    v = _volume()
    many = preprocess._resample_zyx(v, (24, 32, 40))
    one_thread()
    one = preprocess._resample_zyx(v, (24, 32, 40))
    assert np.array_equal(many, one)


def test_compartments_on_threads_equal_one_thread(one_thread):
    z, y, x = np.mgrid[:80, :64, :64]
    r = np.hypot(y - 32, x - 32)
    mask = ((r < 20) & (z > 3) & (z < 76)).astype(np.uint8)
    data = np.where(r < 14, 250, np.where(r < 20, 1100, 20)).astype(np.float32)
    data += np.random.default_rng(1).normal(0, 30, data.shape).astype(np.float32)
    cal = Calibration(mu_scaling=1.0, slope=1.0, intercept=0.0, mu_water=1.0)
    spacing = (0.082, 0.082, 0.082)
    many = compartments.analyse(data.astype(np.int16), mask, spacing, cal)
    one_thread()
    one = compartments.analyse(data.astype(np.int16), mask, spacing, cal)
    assert many is not None and one is not None
    assert {compartments.CORTEX, compartments.TRABECULAR} <= set(np.unique(many.labels).tolist())
    assert np.array_equal(many.labels, one.labels) and many.values == one.values
