"""Receiver process of :class:`stemcal.devices.hardware.dectris.DectrisHardwareBackend`.

Run as a script (``python _dectris_receiver.py CONFIG_JSON``), not imported:
it holds one LiberTEM-live DECTRIS connection (SIMPLON REST + zmq stream)
and acquires whole scans on request. The frames cross to the parent through
a ring of slots in shared memory (``_frame_ring.py``, laid out by the
parent: ``CONFIG_JSON["ring"]``). The parent talks to it in JSON lines:

* stdin, commands: ``{"cmd": "acquire", "nav_shape": [ny, nx],
  "frames_per_partition": k}``, ``{"cmd": "ack", "slot": i}`` (the parent is
  done with slot ``i``: it may be filled again) and ``{"cmd": "close"}``;
* stdout, events: ``{"event": "ready"}`` once connected, then per acquisition
  ``{"event": "frames", "slot": i, "start": s, "count": k}`` for each tile
  of frames copied into a free slot (flat scan positions ``s .. s+k-1``) and
  finally ``{"event": "done", "done": n}`` or ``{"event": "error", "kind":
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
import queue
import sys
import threading
import time
from pathlib import Path
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


def _load(name: str) -> Any:
    """A standalone module beside this script, by path (not through the stemcal package,
    whose imports this process does not need)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"stemcal_receiver_{name}",
                                                  Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def _read_commands(free: queue.Queue, commands: queue.Queue) -> None:
    """Read the parent's commands: acks free their slot, the rest go to ``commands``
    (``None`` when stdin closes)."""
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd.get("cmd") == "ack":
                free.put(int(cmd["slot"]))
            else:
                commands.put(cmd)
    finally:
        commands.put(None)


def main(argv: list[str]) -> int:
    global _CHANNEL
    _CHANNEL = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    cfg = json.loads(argv[1])
    threading.Thread(target=_watch_parent, args=(int(cfg["parent"]),), daemon=True).start()

    from libertem.executor.inline import InlineJobExecutor
    from libertem_live.api import LiveContext

    ring_module, sink_module = _load("_frame_ring"), _load("_frame_sink")
    ring = ring_module.FrameRing(ring_module.RingLayout.from_dict(cfg["ring"]))
    free: queue.Queue = queue.Queue()
    for slot in range(ring.layout.slots):
        free.put(slot)
    commands: queue.Queue = queue.Queue()
    threading.Thread(target=_read_commands, args=(free, commands), daemon=True).start()

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
    state = {"done": 0}

    def sink(start: int, frames: Any) -> None:
        """Copy a tile into free slots (waiting for the parent to give one back) and
        announce each."""
        step = ring.layout.slot_frames
        for i in range(0, len(frames), step):
            part = frames[i:i + step]
            slot = free.get()
            ring.slot(slot, len(part))[:] = part
            _emit(event="frames", slot=slot, start=start + i, count=len(part))
        state["done"] = start + len(frames)

    while True:
        cmd = commands.get()
        if cmd is None or cmd.get("cmd") == "close":
            break
        if cmd.get("cmd") != "acquire":
            _emit(event="error", kind="other", message=f"unknown command {cmd!r}")
            continue
        ny, nx = (int(n) for n in cmd["nav_shape"])
        state["done"] = 0
        try:
            aq = ctx.make_acquisition(
                conn=conn, nav_shape=(ny, nx),
                frames_per_partition=int(cmd["frames_per_partition"]),
                controller=conn.get_active_controller(**controller_kw))
            # The inline executor runs the partitions in scan order, in this thread.
            ctx.run_udf(dataset=aq, udf=sink_module.FrameSinkUDF(sink))
            if state["done"] != ny * nx:
                raise ConnectionError(f"acquisition ended early ({state['done']}/{ny * nx} "
                                      f"frames)")
        except Exception as exc:  # reported to the parent
            kind = "connection" if _is_connection_error(exc) else "other"
            _emit(event="error", kind=kind, done=state["done"],
                  message=f"{type(exc).__name__}: {exc}")
            continue
        _emit(event="done", done=state["done"])
    conn.close()
    ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
