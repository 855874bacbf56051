"""Work on the cores of one machine: a few threads over the parts of a scan, for the stages whose work
releases the GIL (OpenCV, numpy on large arrays). A scan is processed by one process; its own threads use
the cores that ONNX Runtime's threads do not hold between its calls."""

from __future__ import annotations

import os

_limit: int | None = None


def set_threads(n: int | None) -> None:
    """At most ``n`` threads for a scan's work from now on (``--threads``; None: the cores)."""
    global _limit
    _limit = None if n is None else max(1, int(n))


def cores() -> int:
    """CPU cores this process may run on (its affinity where the OS tells it), or fewer where ``set_threads``
    said so."""
    try:
        n = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        n = max(1, os.cpu_count() or 1)
    return n if _limit is None else min(n, _limit)


def spans(total: int, least: int = 1) -> list[range]:
    """``range(total)`` cut into one contiguous run per core (at most 4), each of at least ``least`` items."""
    n = max(1, min(cores(), 4, total // least))
    return [range(i * total // n, (i + 1) * total // n) for i in range(n)]


def each(fn, items, workers: int | None = None) -> None:
    """``fn(item)`` for every item, on up to ``workers`` threads (default: the cores, at most 4), for work
    that releases the GIL (OpenCV, numpy on large arrays) and writes disjoint parts of its outputs. On
    threads, the first exception is raised once all calls have ended (no thread is left writing); with one
    worker, or one item, the calls run in this thread and the first exception ends them."""
    items = list(items)
    n = min(len(items), workers or 4, cores())
    if n <= 1:
        for it in items:
            fn(it)
        return
    from concurrent.futures import ThreadPoolExecutor, wait

    pool = ThreadPoolExecutor(n, thread_name_prefix="vbmd-rt")
    futures = [pool.submit(fn, it) for it in items]
    try:
        wait(futures)
    except BaseException:  # Ctrl-C while waiting: nothing queued starts, what runs ends before this returns
        for f in futures:
            f.cancel()
        while True:
            try:
                wait(futures)
                break
            except BaseException:  # noqa: S112 - a second Ctrl-C still waits for the running calls
                continue
        raise
    finally:
        pool.shutdown(wait=True)
    for f in futures:
        f.result()
