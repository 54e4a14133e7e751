"""One line instead of a bare "Bus error" when a mapped data file shrinks under a read.

The ``.npy`` and MIB readers map the file into memory. When the file is
truncated (or replaced) while a pass reads it, touching a page that is gone
raises SIGBUS in whichever thread reads it. Python's :mod:`signal` handlers
cannot help: they run only after the faulting instruction returns, which it
never does. :func:`install` sets a native handler through :mod:`ctypes`
instead; it takes the GIL (waiting, in a worker thread, until the thread that
holds it lets go), writes one line to stderr and ends the process at once
with exit status 2 (bad input), as the CLI's other errors do. Nothing
recorded is touched: a fit writes only after its passes.

Installed by the commands that read data files (``fit``, ``demo``, ``app``)
and by ``calibrate``, whose live view maps the scan's file as it is written
(:class:`~stemcal.callbacks.frame_map.FrameMap`: checked before each block,
but a file cut while a block is read faults all the same); a library never
installs it. (LiberTEM's buffered reader would turn the
truncation into an exception instead, but it made the pass 35 % slower.)
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal

from .args import EXIT_BAD_INPUT

log = logging.getLogger(__name__)

__all__ = ["install", "MESSAGE"]

MESSAGE = (b"stemcal: error: bus error while reading a memory-mapped data file: it was "
           b"truncated or replaced while it was read\n")

_HANDLER_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_int)
_handler = None


def _on_bus_error(signum: int) -> None:
    os.write(2, MESSAGE)
    os._exit(EXIT_BAD_INPUT)


def install() -> bool:
    """Set the SIGBUS handler for this process; False (with a debug log) where it cannot be."""
    global _handler
    if _handler is not None:
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        set_handler = libc.signal
        set_handler.argtypes = [ctypes.c_int, ctypes.c_void_p]
        set_handler.restype = ctypes.c_void_p
        handler = _HANDLER_TYPE(_on_bus_error)
        if set_handler(signal.SIGBUS, ctypes.cast(handler, ctypes.c_void_p).value) == \
                ctypes.c_void_p(-1).value:
            raise OSError(ctypes.get_errno(), "signal(SIGBUS) failed")
    except Exception:  # noqa: BLE001 - only the nicer message is lost
        log.debug("no SIGBUS handler", exc_info=True)
        return False
    _handler = handler  # the callback must outlive the handler's installation
    return True
