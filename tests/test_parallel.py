"""The stages' own threads (runtime.parallel): the same numbers on one thread as on several, errors raised,
``--threads`` honoured."""

import threading

import numpy as np
import pytest

from vbmd_rt.runtime import compartments, parallel, preprocess
from vbmd_rt.runtime.io.calibration import Calibration


@pytest.fixture
def one_thread():
    parallel.set_threads(None)  # another test's backend may have set a limit in this process
    yield lambda: parallel.set_threads(1)
    parallel.set_threads(None)


def test_each_runs_every_item_and_raises_the_first_error_after_all_ended(one_thread):
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


def test_the_hand_box_sum_is_the_same_on_any_number_of_threads(one_thread):
    """Long stacks of high values: float32 partial sums would round differently per split."""
    v = np.random.default_rng(2).integers(20000, 32767, size=(700, 24, 24), dtype=np.int16)
    exact = v[:, 1::3, 1::3].sum(axis=0, dtype=np.float64).astype(np.float32)
    many = preprocess.centre_sum(v, 3, 3)
    one_thread()
    assert np.array_equal(many, exact) and np.array_equal(preprocess.centre_sum(v, 3, 3), exact)


def test_ctrl_c_while_waiting_leaves_no_call_running():
    """KeyboardInterrupt in the waiting thread: the calls already running end before ``each`` returns, the
    queued ones never start."""
    import signal
    import time

    if parallel.cores() < 2 or not hasattr(signal, "setitimer"):
        pytest.skip("needs two cores and setitimer")
    started, ended = [], []

    def work(i):
        started.append(i)
        time.sleep(0.4)
        ended.append(i)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(KeyboardInterrupt):
            parallel.each(work, range(6), 2)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert sorted(ended) == sorted(started) and len(started) < 6  # nothing left running, the rest never ran
    assert not [t for t in threading.enumerate() if t.name.startswith("vbmd-rt_")]
