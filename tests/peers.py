"""LiberTEM-live's detector simulators as test peers on 127.0.0.1 (shared by the test files).

* :class:`MibSim` -- ``libertem-live-mib-sim`` (Merlin TCP protocol) serving a MIB file;
* :class:`DectrisSim` -- ``libertem-live-dectris-sim`` (SIMPLON REST + zmq) replaying a
  dump written by :func:`write_dectris_dump`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import psutil

HOST = "127.0.0.1"
MIB_SIM = shutil.which("libertem-live-mib-sim", path=str(Path(sys.executable).parent)) \
    or shutil.which("libertem-live-mib-sim")
DECTRIS_SIM = shutil.which("libertem-live-dectris-sim", path=str(Path(sys.executable).parent)) \
    or shutil.which("libertem-live-dectris-sim")
#: The Merlin simulator wrapped so that it refuses a chosen command (tests/devices).
REFUSING_SIM = Path(__file__).parent / "devices" / "refusing_merlin_sim.py"


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class MibSim:
    """A ``libertem-live-mib-sim`` subprocess serving one MIB file on 127.0.0.1.

    ``extra``: further simulator options (``--cached MEM``, ``--dwelltime US``).
    ``refuse``: run the refusing wrapper instead, refusing that command.
    ``ports``: (control, data, trigger), e.g. to restart on the same ports.
    """

    def __init__(self, hdr: Path, log: Path, *extra: str, refuse: str | None = None,
                 ports: tuple[int, int, int] | None = None) -> None:
        self.hdr, self.log, self.extra, self.refuse = hdr, log, extra, refuse
        self.control_port, self.data_port, self.trigger_port = ports or free_ports(3)
        self.start()

    def start(self) -> None:
        cmd = [MIB_SIM] if self.refuse is None else [sys.executable, str(REFUSING_SIM)]
        env = {**os.environ, "STEMCAL_SIM_REFUSE": self.refuse or ""}
        self.log.write_bytes(b"")
        self.proc = subprocess.Popen(
            [*cmd, str(self.hdr), "--host", HOST, "--control-port", str(self.control_port),
             "--data-port", str(self.data_port), "--trigger-port", str(self.trigger_port),
             "--wait-trigger", *self.extra],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while not self.has_logged("DataSocketServer listening", "ControlSocketServer listening"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"simulator did not start ({self.proc.returncode}):\n"
                                   f"{self.text()}")
            time.sleep(0.05)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def has_logged(self, *needles: str) -> bool:
        text = self.text()
        return all(n in text for n in needles)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test stopped it
            self.proc.kill()
        self.proc.wait(10)


def bslz4_chunks(frames: np.ndarray) -> list[bytes]:
    """Each frame bitshuffle-LZ4 encoded, as the HDF5 filter stores a chunk.

    That is DECTRIS's ``bs16-lz4<`` stream encoding too: big-endian uint64
    size, uint32 block size, then the LZ4-compressed bitshuffled blocks.
    """
    import io

    import hdf5plugin

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        ds = f.create_dataset("frames", data=frames, chunks=(1, *frames.shape[1:]),
                              **hdf5plugin.Bitshuffle(cname="lz4"))
        return [bytes(ds.id.read_direct_chunk((i, 0, 0))[1]) for i in range(len(frames))]


def write_dectris_dump(path: Path, data: np.ndarray, *, encoding: str = "bslz4",
                       series: int = 1) -> Path:
    """Write ``data`` (ny, nx, sy, sx) uint16 as the simulator's dump: one 'exte' series.

    Each message is an int64 little-endian length, then the bytes: the
    ``dheader-1.0`` and detector-config JSON, per frame ``dimage-1.0`` (with
    the blob's md5 ``hash``), ``dimage_d-1.0`` (``shape`` [x, y], encoding
    ``bs16-lz4<`` for ``encoding='bslz4'`` -- ARINA's default -- or ``lz4<``),
    the encoded frame and ``dconfig-1.0``; finally ``dseries_end-1.0``. The
    config allows what LiberTEM-live's active mode sets: ``trigger_mode``
    exte, ``nimages`` 1 and ``ntrigger`` ny*nx.
    """
    ny, nx, sy, sx = data.shape
    n = ny * nx
    flat = np.ascontiguousarray(data.reshape(n, sy, sx), "<u2")
    if encoding == "bslz4":
        blobs, tag = bslz4_chunks(flat), "bs16-lz4<"
    elif encoding == "lz4":
        import lz4.block as lz4_block

        blobs, tag = [lz4_block.compress(f.tobytes(), store_size=False) for f in flat], "lz4<"
    else:
        raise ValueError(f"encoding must be 'bslz4' or 'lz4', got {encoding!r}")

    def message(f, payload) -> None:
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode()
        f.write(np.int64(len(payload)).tobytes())
        f.write(payload)

    with open(path, "wb") as f:
        message(f, {"htype": "dheader-1.0", "header_detail": "basic", "series": series})
        message(f, {"nimages": 1, "ntrigger": n, "trigger_mode": "exte",
                    "x_pixels_in_detector": sx, "y_pixels_in_detector": sy,
                    "bit_depth_image": 16, "compression": encoding, "count_time": 0.001,
                    "frame_time": 0.001})
        for i, blob in enumerate(blobs):
            message(f, {"htype": "dimage-1.0", "series": series, "frame": i,
                        "hash": hashlib.md5(blob).hexdigest()})
            message(f, {"htype": "dimage_d-1.0", "shape": [sx, sy], "type": "uint16",
                        "encoding": tag, "size": len(blob)})
            message(f, blob)
            message(f, {"htype": "dconfig-1.0", "start_time": i * 1000,
                        "stop_time": i * 1000 + 900, "real_time": 900})
        message(f, {"htype": "dseries_end-1.0", "series": series})
    return path


class DectrisSim:
    """A ``libertem-live-dectris-sim`` on 127.0.0.1 with ports it picked itself.

    The simulator is two processes: the main one (zmq stream) and a child
    serving the REST API; :meth:`kill_stream` kills the main one only (the
    stream dies mid-scan), :meth:`stop` both.
    """

    def __init__(self, dump: Path, log: Path, *extra: str) -> None:
        self.log = log
        self.proc = subprocess.Popen([DECTRIS_SIM, str(dump), "--port", "0", "--zmqport", "0", *extra],
                                     stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        self.children: list[psutil.Process] = []
        deadline = time.monotonic() + 60
        while True:
            text = self.text()
            api = re.search(r"API server listening on \('[\d.]+', (\d+)\)", text)
            zmq = re.search(r"RustedReplay listening on tcp://[\d.]+:(\d+)", text)
            if api and zmq:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"simulator did not start:\n{text}")
            time.sleep(0.05)
        self.api_port, self.data_port = int(api.group(1)), int(zmq.group(1))
        self.children = psutil.Process(self.proc.pid).children(recursive=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill_stream(self) -> None:
        self.proc.kill()

    def stop(self) -> None:
        for p in [psutil.Process(self.proc.pid)] if self.proc.poll() is None else []:
            p.send_signal(signal.SIGCONT)  # in case a test stopped it
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for child in self.children:
            try:
                child.kill()
                child.wait(10)
            except psutil.NoSuchProcess:
                pass
