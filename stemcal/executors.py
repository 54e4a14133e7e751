"""LiberTEM contexts: inline, local dask, or a running cluster.

:class:`libertem.api.Context` imports every executor it can make when it is imported:
the dask executor (``distributed``), the delayed one (``dask.array``, which imports
``xarray`` and ``pandas`` where they are installed, as here) and the pipelined one.
On this project's 2-core VM that is 0.6 s of the 1.1 s that importing
``libertem.api`` takes, paid by every ``stemcal fit`` and by every process whose
calibration recorder runs its own passes. :class:`InlineContext`, the default
context of stemcal (command line, fit, recorder, app), is the part of the Context
that stemcal calls (``load``, ``run_udf``, ``close``) on LiberTEM's inline
executor, through the same UDF runner the Context uses, so a pass gives the
same results. Any :class:`libertem.api.Context` (a dask cluster, LiberTEM-live's)
can be passed wherever stemcal takes a context.
"""
from __future__ import annotations

import copy
import logging
import sys
import types
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["InlineContext", "make_context", "skip_fft_probe", "skip_numba_extensions",
           "skip_preload", "command_line_process"]


class InlineContext:
    """:meth:`load` and :meth:`run_udf` of :class:`libertem.api.Context` on LiberTEM's
    :class:`~libertem.executor.inline.InlineJobExecutor` (one process; each UDF shares its
    tiles out to its own threads)."""

    def __init__(self) -> None:
        from libertem.executor.inline import InlineJobExecutor
        self.executor = InlineJobExecutor()

    def load(self, filetype: str, *args, io_backend=None, **kwargs):
        """A LiberTEM data set, as :meth:`libertem.api.Context.load`."""
        from libertem.io.dataset import load
        return load(filetype, *args, io_backend=io_backend, executor=self.executor,
                    enable_async=False, **kwargs)

    def run_udf(self, dataset, udf, roi=None, corrections=None, progress: Any = False,
                backends=None):
        """Run one UDF or a list of them to the end, as :meth:`libertem.api.Context.run_udf`
        (without live plots): the result dict, or a list of them for a list of UDFs.

        ``progress``: False, True (a progress bar) or a LiberTEM ``ProgressReporter``.
        ``roi``: a mask of the scan (copied and cast to bool, as the Context does), or None.
        """
        from libertem.common.async_utils import run_gen_get_last
        from libertem.common.progress import ProgressReporter
        from libertem.common.sparse import sparse_to_coo

        many = isinstance(udf, (list, tuple))
        udfs = list(udf) if many else [udf]
        if not udfs:
            raise ValueError("empty list of UDFs: nothing to run")
        if corrections is None:
            corrections = dataset.get_correction_data()
        if roi is not None:
            roi = sparse_to_coo(copy.deepcopy(roi), dataset.shape.nav)
            roi = roi.astype(bool) if roi.dtype != bool else roi
        reporter = None
        if isinstance(progress, ProgressReporter):
            reporter, progress = progress, True
        runner = self.executor.get_udf_runner()(udfs, progress_reporter=reporter)
        results = run_gen_get_last(runner.run_for_dataset_sync(
            dataset=dataset, executor=self.executor, roi=roi, progress=bool(progress),
            corrections=corrections, backends=backends, iterate=False))
        return results.buffers if many else results.buffers[0]

    def close(self) -> None:
        self.executor.close()

    def __enter__(self) -> "InlineContext":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_context(executor: str = "inline", cluster: str | None = None):
    """A LiberTEM context: :class:`InlineContext` for
    ``inline``, else a :class:`libertem.api.Context`.

    Parameters
    ----------
    executor : {'inline', 'dask'}
        ``inline`` runs in this process (one core per pass); ``dask`` starts a
        local dask cluster with one worker per core.
    cluster : str, optional
        Address of a running ``dask.distributed`` scheduler
        (``tcp://HOST:PORT``); overrides ``executor``. Workers must be able to
        read the dataset file at the same path.
    """
    if cluster:
        from libertem.api import Context
        from libertem.executor.dask import DaskJobExecutor
        if not cluster.startswith(("tcp://", "tls://", "inproc://", "ucx://")):
            raise ValueError(f"cluster address must look like tcp://HOST:PORT, got {cluster!r}")
        log.info("connecting to dask scheduler %s", cluster)
        return Context(executor=DaskJobExecutor.connect(cluster))
    if executor == "inline":
        return InlineContext()   # without libertem.api's imports (0.6 s)
    if executor == "dask":
        from libertem.api import Context
        return Context.make_with("dask")
    raise ValueError(f"unknown executor {executor!r}; choose 'inline' or 'dask'")


def skip_fft_probe() -> bool:
    """Tell LiberTEM that pyFFTW is absent, in a process that runs only stemcal's UDFs.

    Before each task LiberTEM sets the thread limits of the FFT libraries a UDF might
    use, and the first time it imports pyFFTW where it is installed and runs a threaded
    FFT to probe it: 0.8 s on this project's 2-core VM under load (abTEM, in the test
    extra, brings pyFFTW; so may a facility's other software). stemcal's UDFs use no
    FFT library, so the command line's own processes (``stemcal fit``, ``stemcal
    calibrate``) skip the probe. Not done on import or in library calls (the profile,
    notebooks, the app), where other UDFs may use pyFFTW and need LiberTEM's thread
    limits and its threaded-executor work-around. A process that has imported pyFFTW
    or where LiberTEM has probed already keeps LiberTEM's answer.

    Returns whether the probe is now skipped.
    """
    if "pyfftw" in sys.modules:
        return False
    from libertem.common import threading as lt_threading

    name = "__has_pyfftw"   # LiberTEM's module global: None until probed
    if name not in vars(lt_threading) or vars(lt_threading)[name] is not None:
        return False
    setattr(lt_threading, name, False)
    log.debug("LiberTEM's pyFFTW probe skipped: stemcal's UDFs use no FFT library")
    return True


def skip_numba_extensions() -> bool:
    """Tell Numba that the installed packages' Numba extensions are loaded, in a process
    that runs only stemcal's kernels.

    Before its first compilation or cache load Numba runs the ``numba_extensions``
    entry point of every installed package; awkward's (it comes with tiled's ragged
    arrays) imports ``awkward.operations`` and pyarrow: 0.1-0.2 s of every
    ``stemcal fit`` here. stemcal's kernels take plain NumPy arrays and numbers, so
    the command line's own processes skip them, as :func:`skip_fft_probe` (not in
    library calls, where other code may pass an extension's types to Numba). A
    process where Numba has loaded them already keeps them.

    Returns whether they are now skipped.
    """
    from numba.core import entrypoints

    name = "_already_initialized"   # Numba's module global: False until loaded
    if vars(entrypoints).get(name) is not False:
        return False
    setattr(entrypoints, name, True)
    log.debug("Numba's extension entry points skipped: stemcal's kernels need none")
    return True


def skip_preload() -> bool:
    """Let LiberTEM's inline executor start without its preload module's imports, in a
    process that runs only stemcal's UDFs.

    LiberTEM's :class:`~libertem.executor.inline.InlineJobExecutor` imports
    ``libertem.preload`` when it is made, a module written for dask workers (that
    their first task does not wait for slow imports): matplotlib's colours (0.1 s on
    2 cores; stemcal's UDFs draw nothing), sparse, Numba's CUDA target, torch where
    installed, hdf5plugin, and it raises the open-file limit. Here only the file limit
    is raised as there; the rest is left to whoever needs it. hdf5plugin's filters
    (compressed HDF5, as DECTRIS writes it) are registered where stemcal meets such a
    file in this process: :func:`stemcal.formats.open_dataset`'s HDF5 probe, and the
    writers that compress (0.04 s of every ``stemcal fit`` of an ``.npy`` or MIB file
    otherwise). For the command line's own processes only, as :func:`skip_fft_probe`
    (the profile, notebooks and the app may run LiberTEM's plots). A process that has
    imported ``libertem.preload`` keeps it.

    Returns whether the preload is now skipped.
    """
    name = "libertem.preload"
    if name in sys.modules:
        return False
    from libertem.common.backend import set_file_limit

    set_file_limit()
    sys.modules[name] = types.ModuleType(name, "Stand-in put here by stemcal.executors."
                                               "skip_preload: its imports were skipped.")
    log.debug("LiberTEM's preload skipped: stemcal's UDFs need none of its imports")
    return True


def command_line_process() -> None:
    """What a command-line process that runs only stemcal's UDFs and kernels skips
    (``stemcal fit``, ``stemcal calibrate``): :func:`skip_fft_probe`,
    :func:`skip_numba_extensions` and :func:`skip_preload`."""
    skip_fft_probe()
    skip_numba_extensions()
    skip_preload()
