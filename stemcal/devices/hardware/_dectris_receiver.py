"""Receiver process of :class:`stemcal.devices.hardware.dectris.DectrisHardwareBackend`.

Run as a script (``python _dectris_receiver.py CONFIG_JSON``), not imported:
it holds one LiberTEM-live DECTRIS connection (SIMPLON REST + zmq stream)
and acquires whole scans on request. The parent talks to it in JSON lines:

* stdin, commands: ``{"cmd": "acquire", "nav_shape": [ny, nx], "out": PATH,
  "dtype": "<u2", "frames_per_partition": k}`` (frames go into the raw file
  ``PATH``, C order, already sized by the parent; each partition's frames are
  there before its ``progress`` event) and ``{"cmd": "close"}``;
* stdout, events: ``{"event": "ready"}`` once connected, then per acquisition
  ``{"event": "progress", "done": n}`` after each partition and finally
  ``{"event": "done", "done": n}`` or ``{"event": "error", "kind":
  "connection" | "other", "message": ...}``.

Why a process: LiberTEM-live's zmq receive (``get_next_stack``) has no
timeout and cannot be interrupted or closed from another thread; a receive
left blocked in a thread also aborts the interpreter at exit. A process can
be killed, which is what the parent does when frames stop coming. The
receiver exits by itself when its parent dies or closes stdin.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any


#: The parent's message channel: the original stdout (fd 1 itself goes to stderr, so that
#: anything a library prints cannot corrupt the messages).
_CHANNEL: Any = None


def _emit(**event: Any) -> None:
    _CHANNEL.write(json.dumps(event) + "\n")
    _CHANNEL.flush()


def _watch_parent(parent: int) -> None:
    """Exit when the parent process is gone (re-parenting changes ``getppid``)."""
    while True:
        if os.getppid() != parent:
            os._exit(3)
        time.sleep(0.5)


def _is_connection_error(exc: BaseException) -> bool:
    from libertem.common.executor import JobCancelledError

    return isinstance(exc, (ConnectionError, JobCancelledError, OSError)) \
        or type(exc).__name__ in ("PyConnectionError", "TimeoutError")


def main(argv: list[str]) -> int:
    global _CHANNEL
    _CHANNEL = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    cfg = json.loads(argv[1])
    threading.Thread(target=_watch_parent, args=(int(cfg["parent"]),), daemon=True).start()

    import numpy as np
    from libertem.executor.inline import InlineJobExecutor
    from libertem.udf.base import UDF
    from libertem_live.api import LiveContext

    class Frames(UDF):
        """Every frame in its native dtype (as ``stemcal.devices.hardware.merlin.FrameCollectorUDF``)."""

        def get_result_buffers(self) -> dict[str, Any]:
            return {"frames": self.buffer(kind="nav", dtype=self.meta.input_dtype,
                                          extra_shape=tuple(self.meta.dataset_shape.sig))}

        def get_preferred_input_dtype(self) -> Any:
            return self.USE_NATIVE_DTYPE

        def process_partition(self, partition: np.ndarray) -> None:
            self.results.frames[:] = partition

    ctx = LiveContext(executor=InlineJobExecutor())
    try:
        conn = ctx.make_connection("dectris").open(
            api_host=cfg["api_host"], api_port=cfg["api_port"], data_host=cfg["data_host"],
            data_port=cfg["data_port"], buffer_size=cfg["buffer_size"],
            bytes_per_frame=cfg["bytes_per_frame"], frame_stack_size=cfg["frame_stack_size"])
    except Exception as exc:  # reported to the parent
        _emit(event="error", kind="connection", message=f"{type(exc).__name__}: {exc}")
        return 1
    _emit(event="ready", handle_path=getattr(conn, "_shm_handle_path", None))
    controller_kw = {k: v for k, v in cfg.get("controller", {}).items() if v is not None}
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("cmd") == "close":
            break
        if cmd.get("cmd") != "acquire":
            _emit(event="error", kind="other", message=f"unknown command {cmd!r}")
            continue
        ny, nx = (int(n) for n in cmd["nav_shape"])
        done = 0
        try:
            aq = ctx.make_acquisition(
                conn=conn, nav_shape=(ny, nx),
                frames_per_partition=int(cmd["frames_per_partition"]),
                controller=conn.get_active_controller(**controller_kw))
            out = np.memmap(cmd["out"], dtype=np.dtype(cmd["dtype"]), mode="r+")
            for part in ctx.run_udf_iter(dataset=aq, udf=Frames()):
                # The inline executor runs the partitions in scan order: frames
                # done..now are new. They go to the parent's file before the event.
                now = int(np.count_nonzero(part.damage.data))
                frames = np.asarray(part.buffers[0]["frames"].data).reshape(ny * nx, -1)
                out.reshape(ny * nx, -1)[done:now] = frames[done:now]
                out.flush()
                done = now
                _emit(event="progress", done=done)
            del out
            if done != ny * nx:
                raise ConnectionError(f"acquisition ended early ({done}/{ny * nx} frames)")
        except Exception as exc:  # reported to the parent
            kind = "connection" if _is_connection_error(exc) else "other"
            _emit(event="error", kind=kind, done=done, message=f"{type(exc).__name__}: {exc}")
            continue
        _emit(event="done", done=done)
    conn.close()
    ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
