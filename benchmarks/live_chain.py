"""Benchmark of the live chain at detector rate, beside LiberTEM-live's SumUDF on the same simulator.

Run from the repository root::

    .venv/bin/python benchmarks/live_chain.py                     # 64x64 and 128x128 scans
    .venv/bin/python benchmarks/live_chain.py --scans 64x64 --repeat 2 --protocols merlin

For each protocol (Merlin TCP through ``libertem-live-mib-sim --cached MEM``,
DECTRIS SIMPLON + zmq through ``libertem-live-dectris-sim``) and scan of
256x256 uint16 frames, one simulator on 127.0.0.1 serves every case of the
row, one after another:

* ``SumUDF``: LiberTEM-live's own reduction, ``ctx.run_udf(aq, SumUDF())`` on
  an inline executor, from the trigger to the result (the baseline);
* ``backend``: :meth:`HardwareBackend.acquire` into a sink that keeps nothing;
* ``chain``: ``overfocus_scan(..., live=True)`` through a bluesky RunEngine:
  detector (hardware backend) -> FrameStreamWriter (SWMR HDF5) -> stream
  documents -> :class:`~stemcal.callbacks.live_view.LiveView` (reads the
  announced frames from the file, projects them), from ``kickoff`` to the
  last frame projected (frames/s) and to the stop document.

Each case runs once untimed (the simulator fills its cache, Numba compiles),
then ``--repeat`` times; the best is printed. The ratio is the case's
frames/s over SumUDF's in the same run. Peak RSS is this process's high-water
mark over the case (reset before it through ``/proc/self/clear_refs``), plus
the DECTRIS backend's receiver process where there is one. Nothing is
asserted; see benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))   # tests/peers.py: the simulators
sys.path.insert(0, str(HERE))

SIG = (256, 256)
DEFAULT_SCANS = ((64, 64), (128, 128))
PROTOCOLS = ("merlin", "dectris")
DOSE = 5.0
#: Target of the performance issue: the chain at least this fraction of SumUDF's frames/s.
TARGET = 0.8


# -- data -------------------------------------------------------------------------------------

def scan_data(nav: tuple[int, int], strip_rows: int = 8) -> np.ndarray:
    """``nav`` scan of :data:`SIG` uint16 frames: one simulated strip of rows repeated."""
    from run import geometry
    from stemcal.twin.simulator import simulate
    strip = simulate(geometry(SIG), (min(strip_rows, nav[0]), nav[1]), SIG, dose=DOSE,
                     dtype="uint16")
    reps = -(-nav[0] // strip.shape[0])
    return np.concatenate([strip] * reps)[:nav[0]]


def write_served(directory: str, nav: tuple[int, int], protocol: str) -> str:
    """The simulator's input for ``nav``: a ``.hdr`` (Merlin) or a stream dump (DECTRIS)."""
    data = scan_data(nav)
    name = Path(directory) / f"live_{protocol}_{nav[0]}x{nav[1]}"
    if protocol == "merlin":
        from stemcal.formats import write_mib
        return str(write_mib(name.with_suffix(".mib"), data))
    from peers import write_dectris_dump
    return str(write_dectris_dump(name.with_suffix(".dump"), data))


# -- memory -----------------------------------------------------------------------------------

def reset_peak(pid: int | str = "self") -> None:
    """Reset a process's peak RSS (``VmHWM``) to its current RSS (Linux ``clear_refs`` 5)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def peak_gb(pid: int | str = "self") -> float:
    """A process's peak RSS (``VmHWM``) in GB; 0 when it cannot be read."""
    try:
        for row in Path(f"/proc/{pid}/status").read_text().splitlines():
            if row.startswith("VmHWM:"):
                return int(row.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return 0.0


# -- the simulators ---------------------------------------------------------------------------

@dataclass
class Peer:
    """One simulator serving one scan, and how to reach it."""

    protocol: str
    nav: tuple[int, int]
    server: Any
    api_port: int
    data_port: int

    def stop(self) -> None:
        self.server.stop()

    def cpu(self) -> float:
        """CPU seconds the simulator's processes have used so far."""
        import psutil
        procs = [psutil.Process(self.server.proc.pid)]
        procs += [p for p in getattr(self.server, "children", [])]
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total


def start_peer(protocol: str, served: str, nav: tuple[int, int], log_dir: Path) -> Peer:
    from peers import DectrisSim, MibSim
    log = log_dir / f"{protocol}_{nav[0]}x{nav[1]}.log"
    if protocol == "merlin":
        sim = MibSim(Path(served), log, "--cached", "MEM")
        return Peer(protocol, nav, sim, sim.control_port, sim.data_port)
    sim = DectrisSim(Path(served), log)
    return Peer(protocol, nav, sim, sim.api_port, sim.data_port)


#: Dwell time set on the scan, seconds: about the simulator's frame period here (its frames
#: come at ~10,000/s); a backend's partitions then hold 256 frames.
DWELL = 1e-4


class Scan:
    """What a hardware backend reads of a scan generator: ``nav_shape`` and ``dwell_time``."""

    def __init__(self, nav: tuple[int, int]) -> None:
        from ophyd import Signal
        self.nav_shape = nav
        self.dwell_time = Signal(name="dwell_time", value=DWELL)


def make_backend(peer: Peer, scan: Any) -> Any:
    from peers import HOST
    if peer.protocol == "merlin":
        from stemcal.devices.hardware.merlin import MerlinHardwareBackend
        return MerlinHardwareBackend(scan, api_host=HOST, api_port=peer.api_port, data_host=HOST,
                                     data_port=peer.data_port, sig_shape=SIG, timeout=30.0)
    from stemcal.devices.hardware.dectris import DectrisHardwareBackend
    return DectrisHardwareBackend(scan, api_host=HOST, api_port=peer.api_port, data_host=HOST,
                                  data_port=peer.data_port, sig_shape=SIG, pixel_size=55e-6,
                                  timeout=30.0)


# -- the cases --------------------------------------------------------------------------------

@dataclass
class Timing:
    """Seconds of a case's repeats (wall, CPU), and its peak memory."""

    seconds: list[float] = field(default_factory=list)
    to_stop: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)       # this process + the receiver: user
    sys: list[float] = field(default_factory=list)       # ... and system
    sim_cpu: list[float] = field(default_factory=list)   # the simulator's processes
    peak: float = 0.0

    @property
    def best(self) -> float:
        return min(self.seconds)


def cpu_seconds(pids: list[int]) -> np.ndarray:
    """User and system CPU seconds of this process and of ``pids`` (their threads, not
    their children) so far."""
    import psutil
    total = np.array(os.times()[:2])
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += (t.user, t.system)
        except psutil.Error:
            pass
    return total


class Clock:
    """Wall and CPU time of one repeat: ``with Clock(timing, peer, receiver): ...``."""

    def __init__(self, timing: Timing, peer: "Peer", receiver: int | None = None) -> None:
        self.timing, self.peer = timing, peer
        self.own = [receiver] if receiver else []

    def __enter__(self) -> "Clock":
        self.t0 = time.perf_counter()
        self.c0, self.s0 = cpu_seconds(self.own), self.peer.cpu()
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.timing.seconds.append(time.perf_counter() - self.t0)
            user, system = cpu_seconds(self.own) - self.c0
            self.timing.cpu.append(float(user))
            self.timing.sys.append(float(system))
            self.timing.sim_cpu.append(self.peer.cpu() - self.s0)


def sum_udf(peer: Peer, repeat: int) -> Timing:
    """LiberTEM-live's SumUDF on an inline executor: trigger to result, best of ``repeat``."""
    from libertem.executor.inline import InlineJobExecutor
    from libertem.udf.sum import SumUDF
    from libertem_live.api import LiveContext
    from peers import HOST

    ctx = LiveContext(executor=InlineJobExecutor())
    n = peer.nav[0] * peer.nav[1]
    out = Timing()
    try:
        if peer.protocol == "merlin":
            from stemcal.devices.hardware.merlin import _control_class
            conn = ctx.make_connection("merlin").open(api_host=HOST, api_port=peer.api_port,
                                                      data_host=HOST, data_port=peer.data_port)
            time.sleep(0.5)  # the simulator notices a new client at its next poll

            def once() -> None:
                control = _control_class()(host=HOST, port=peer.api_port, timeout=10.0)
                control.connect()
                try:
                    control.set("NUMFRAMESTOACQUIRE", n)
                    control.cmd("STARTACQUISITION")
                    control.cmd("SOFTTRIGGER")
                finally:
                    control.close()
                pending = conn.wait_for_acquisition(timeout=30.0)
                aq = ctx.make_acquisition(conn=conn, nav_shape=peer.nav, pending_aq=pending)
                ctx.run_udf(dataset=aq, udf=SumUDF())
        else:
            conn = ctx.make_connection("dectris").open(
                api_host=HOST, api_port=peer.api_port, data_host=HOST, data_port=peer.data_port,
                buffer_size=256, bytes_per_frame=SIG[0] * SIG[1] * 2)

            def once() -> None:
                aq = ctx.make_acquisition(conn=conn, nav_shape=peer.nav,
                                          controller=conn.get_active_controller(trigger_mode="exte"))
                ctx.run_udf(dataset=aq, udf=SumUDF())
        try:
            once()  # warm-up: the Merlin simulator fills its cache
            reset_peak()
            for _ in range(repeat):
                with Clock(out, peer):
                    once()
            out.peak = peak_gb()
        finally:
            conn.close()
    finally:
        ctx.close()
    time.sleep(0.5)  # let a single-client simulator notice the closed connection
    return out


def backend_alone(peer: Peer, repeat: int) -> Timing:
    """The hardware backend's ``acquire`` into a sink that keeps nothing."""
    backend = make_backend(peer, Scan(peer.nav))
    out = Timing()
    count = [0]

    def sink(start: int, frames: np.ndarray) -> None:
        count[0] += len(frames)

    try:
        backend.prepare()
        backend.acquire(on_frames=sink)
        reset_peak()
        receiver = getattr(backend, "_proc", None)
        if receiver is not None:
            reset_peak(receiver.pid)
        for _ in range(repeat):
            count[0] = 0
            with Clock(out, peer, receiver.pid if receiver is not None else None):
                backend.acquire(on_frames=sink)
            assert count[0] == peer.nav[0] * peer.nav[1], count
        out.peak = peak_gb() + (peak_gb(receiver.pid) if receiver is not None else 0.0)
    finally:
        backend.close()
    time.sleep(0.5)
    return out


def chain(peer: Peer, repeat: int, write_dir: Path) -> Timing:
    """``overfocus_scan(live=True)`` -> documents -> LiveView, kickoff to last frame projected."""
    from bluesky import RunEngine

    from run import geometry
    from stemcal.callbacks.live_view import LiveView
    from stemcal.devices import MerlinDetector, MicroscopeOptics, ScanGenerator
    from stemcal.plans import overfocus_scan

    truth = geometry(SIG)
    scan = ScanGenerator(name="scan")
    for sig, value in ((scan.shape_y, peer.nav[0]), (scan.shape_x, peer.nav[1]),
                       (scan.pixel_size, truth.scan_pixel_size), (scan.dwell_time, DWELL)):
        sig.set(value).wait(timeout=5)
    optics = MicroscopeOptics(name="optics")
    for sig, value in ((optics.overfocus, truth.overfocus),
                       (optics.camera_length, truth.camera_length)):
        sig.set(value).wait(timeout=5)
    backend = make_backend(peer, scan)
    det = MerlinDetector("det", backend=backend, write_dir=write_dir)
    RE = RunEngine({}, call_returns_result=True)
    marks: dict[str, float] = {}

    def hook(msg: Any) -> None:
        if msg.command == "kickoff":
            marks["kickoff"] = time.monotonic()

    RE.msg_hook = hook
    out = Timing()
    n = peer.nav[0] * peer.nav[1]

    def once() -> None:
        view = LiveView(figure=False)
        token = RE.subscribe(view)
        stop = RE.subscribe(lambda name, doc: marks.__setitem__("stop", time.monotonic()), "stop")
        receiver = getattr(backend, "_proc", None)
        try:
            with Clock(out, peer, receiver.pid if receiver is not None else None):
                result = RE(overfocus_scan(det, scan, optics, guess=truth, live=True))
        finally:
            RE.unsubscribe(token)
            RE.unsubscribe(stop)
        if result.exit_status != "success" or view.error or not view.history \
                or view.history[-1][1] != n:
            raise RuntimeError(f"live chain failed: {result.exit_status} {view.error} "
                               f"{view.history[-1:] if view.history else 'nothing projected'}")
        out.seconds[-1] = view.history[-1][0] - marks["kickoff"]
        out.to_stop.append(marks["stop"] - marks["kickoff"])
        for path in write_dir.glob("*.h5"):
            path.unlink()

    try:
        once()
        for values in (out.seconds, out.to_stop, out.cpu, out.sys, out.sim_cpu):
            values.clear()
        reset_peak()
        receiver = getattr(backend, "_proc", None)
        if receiver is not None:
            reset_peak(receiver.pid)
        for _ in range(repeat):
            once()
        out.peak = peak_gb() + (peak_gb(receiver.pid) if receiver is not None else 0.0)
    finally:
        backend.close()
    time.sleep(0.5)
    return out


def write_floor(directory: str, nbytes: int, repeat: int, block: int = 2**20) -> float:
    """Best seconds to write ``nbytes`` to a new file in ``directory`` in ``block`` pieces
    (``os.pwrite``, as the stream writer does): what the chain pays on top of the backend."""
    data = memoryview(np.ones(block, dtype=np.uint8))
    best = float("inf")
    for _ in range(repeat):
        fd, name = tempfile.mkstemp(dir=directory, suffix=".floor")
        try:
            t0 = time.perf_counter()
            for at in range(0, nbytes, block):
                os.pwrite(fd, data[:min(block, nbytes - at)], at)
            best = min(best, time.perf_counter() - t0)
        finally:
            os.close(fd)
            os.unlink(name)
    return best


# -- output -----------------------------------------------------------------------------------

def bench_live(scans, protocols, repeat: int, directory: str) -> list[list[str]]:
    """Run every case; return the table rows (also printed)."""
    from run import load_average, table

    spawn = multiprocessing.get_context("spawn")
    rows, notes = [], []
    load_before = load_average()
    for protocol in protocols:
        for nav in scans:
            t0 = time.perf_counter()
            with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                served = pool.submit(write_served, directory, nav, protocol).result()
            print(f"  ... {protocol} {nav[0]}x{nav[1]}: data written in "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
            peer = start_peer(protocol, served, nav, Path(directory))
            n = nav[0] * nav[1]
            try:
                base = sum_udf(peer, repeat)
                alone = backend_alone(peer, repeat)
                with tempfile.TemporaryDirectory(dir=directory) as write_dir:
                    whole = chain(peer, repeat, Path(write_dir))
            finally:
                peer.stop()
                for path in Path(served).parent.glob(Path(served).stem + ".*"):
                    path.unlink()
            name = f"{protocol} {nav[0]}x{nav[1]} x {SIG[0]}x{SIG[1]}"
            nbytes = n * SIG[0] * SIG[1] * 2
            floor = write_floor(directory, nbytes, repeat)
            notes.append(f"  {name}: writing its {nbytes / 2**20:,.0f} MiB to a new file "
                         f"there took {floor:.3f} s ({n / floor:,.0f} frames/s)")
            fps0 = n / base.best
            for case, timing, extra in (
                    ("SumUDF", base, "-"), ("backend", alone, "-"),
                    ("chain", whole, f"{n / min(whole.to_stop):,.0f}")):
                fps = n / timing.best
                rows.append([name, case, f"{timing.best:.3f}", f"{fps:,.0f}", extra,
                             f"{fps / fps0:.2f}", "-" if case == "SumUDF" else f">= {TARGET:g}",
                             f"{1e3 * min(timing.cpu) / n:.3f}", f"{1e3 * min(timing.sys) / n:.3f}",
                             f"{1e3 * min(timing.sim_cpu) / n:.3f}", f"{timing.peak:.2f}"])
                print(f"  ... {name} {case}: {timing.best:.3f} s "
                      f"({', '.join(f'{s:.3f}' for s in timing.seconds)})",
                      file=sys.stderr, flush=True)
    table(f"live chain: frames/s through the detector's protocol, simulator on 127.0.0.1 "
          f"(best of {repeat}, after 1 warm-up)",
          ["scan", "case", "s", "frames/s", "to stop f/s", "ratio", "target", "user ms/f",
           "sys ms/f", "sim ms/f", "peak RSS GB"], rows)
    print(f"  load average (1/5/15 min) before {load_before}, after {load_average()}; ratio: "
          f"frames/s / SumUDF frames/s on the same simulator in this run")
    print("  the file system's share (best of the repeats; the chain writes every frame once):")
    print("\n".join(notes))
    return rows


def parse_scan(text: str) -> tuple[int, int]:
    try:
        ny, nx = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"scan must look like 64x64, got {text!r}") from None
    if min(ny, nx) < 1:
        raise argparse.ArgumentTypeError(f"scan must be positive, got {text!r}")
    return ny, nx


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scans", nargs="+", type=parse_scan, metavar="NYxNX",
                    default=list(DEFAULT_SCANS), help="scan shapes (default 64x64 128x128)")
    ap.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions, best taken")
    ap.add_argument("--dir", default=None, help="where the data go (default: system temp)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="stemcal-live-", dir=args.dir) as tmp:
        bench_live(args.scans, args.protocols, args.repeat, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
