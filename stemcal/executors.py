"""LiberTEM contexts for the command line: inline, local dask, or a running cluster."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def make_context(executor: str = "inline", cluster: str | None = None):
    """A :class:`libertem.api.Context`.

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
    from libertem.api import Context
    if cluster:
        from libertem.executor.dask import DaskJobExecutor
        if not cluster.startswith(("tcp://", "tls://", "inproc://", "ucx://")):
            raise ValueError(f"cluster address must look like tcp://HOST:PORT, got {cluster!r}")
        log.info("connecting to dask scheduler %s", cluster)
        return Context(executor=DaskJobExecutor.connect(cluster))
    if executor == "inline":
        return Context.make_with("inline")
    if executor == "dask":
        return Context.make_with("dask")
    raise ValueError(f"unknown executor {executor!r}; choose 'inline' or 'dask'")
