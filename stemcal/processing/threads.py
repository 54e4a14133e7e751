"""The thread pool of the pass kernels: frames shared out to threads in contiguous chunks.

Thread ``t`` adds into ``acc[t]`` only, so no two threads write the same
memory and the result does not depend on scheduling. The UDF takes the
thread count from LiberTEM's ``threads_per_worker`` (one per core inline,
one per dask worker; :func:`udf_threads`), so a pass uses both cores inline
without oversubscribing a dask cluster. Plain Python threads run the
GIL-free Numba kernels: OpenMP worker threads spin while they wait, which
costs dearly on a machine whose cores are busy with other work.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["available_cores", "udf_threads", "run_threads", "start_threads", "wait_jobs"]


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    with _POOLS_LOCK:
        if threads not in _POOLS:
            _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="stemcal-project")
        return _POOLS[threads]


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def udf_threads(meta) -> int:
    """Threads a UDF may use in ``process_*``: LiberTEM's ``threads_per_worker`` (1 if unset)."""
    threads = getattr(meta, "threads_per_worker", None)
    return max(1, int(threads)) if threads else 1


def _chunks(n: int, threads: int) -> list[tuple[int, int, int]]:
    chunk = -(-n // max(1, threads))
    return [(t, t * chunk, min(n, (t + 1) * chunk)) for t in range(threads) if t * chunk < n]


def run_threads(work, n: int, threads: int) -> None:
    """Call ``work(t, i0, i1)`` for ``threads`` contiguous chunks ``[i0, i1)`` of ``range(n)``.

    With more than one chunk they run on a shared pool of ``threads`` threads
    (``work`` must release the GIL to gain anything); exceptions propagate.
    """
    jobs = _chunks(n, threads)
    if len(jobs) <= 1:
        for job in jobs:
            work(*job)
        return
    wait_jobs([_pool(threads).submit(work, *job) for job in jobs])


def start_threads(work, n: int, threads: int) -> list:
    """:func:`run_threads` without waiting: the chunks' futures (always run on the pool, also
    a single chunk, so that the caller is free at once). Wait with :func:`wait_jobs`."""
    return [_pool(max(1, threads)).submit(work, *job) for job in _chunks(n, threads)]


def wait_jobs(futures) -> None:
    """Wait for every future (all of them, even when one fails), then re-raise the first error."""
    error = None
    for fut in futures:
        try:
            fut.result()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            error = error or exc
    if error is not None:
        raise error
