"""How a plan waits for the recorder: the status of a run's calibration, through the RunEngine.

The plans depend on the recorder only by duck typing (``result_status(run_uid)``,
see :class:`stemcal.callbacks.CalibrationRecorder`); the caller builds it
(:func:`stemcal.session.make_recorder`) and either subscribes it to the
RunEngine or lets the plan subscribe it for its duration (``subscribe=True``).
"""
from __future__ import annotations

import asyncio
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator

__all__ = ["wait_status", "check_recorder", "status_of", "subscribed"]


def wait_status(status: Any, timeout: float | None, what: str) -> MsgGenerator[None]:
    """Wait (through the RunEngine, not blocking its loop) for an ophyd status to finish."""

    def future() -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def finish() -> None:
            if not fut.done():
                fut.set_result(None)

        status.add_callback(lambda _st: loop.call_soon_threadsafe(finish))
        return fut

    try:
        yield from bps.wait_for([future], timeout=timeout)
    except TimeoutError:  # the RunEngine's WaitForTimeoutError
        raise TimeoutError(f"{what} did not finish within {timeout} s") from None


def check_recorder(callback: Any) -> None:
    """``ValueError`` unless ``callback`` can report a run's result (``result_status``)."""
    if callback is None:
        raise ValueError("give callback: a calibration recorder "
                         "(stemcal.session.make_recorder(catalog_client))")
    if not callable(getattr(callback, "result_status", None)):
        raise ValueError(f"callback must have result_status(run_uid) (a "
                         f"stemcal.callbacks.CalibrationRecorder), got {callback!r}")


def status_of(recorder: Any, uid: str) -> Any:
    try:
        return recorder.result_status(uid)
    except KeyError:
        raise RuntimeError(
            f"the calibration callback did not receive run {uid}: subscribe it to the "
            f"RunEngine (RE.subscribe(recorder)) or pass subscribe=True") from None


def subscribed(plan: MsgGenerator[Any], recorder: Any, own: bool) -> MsgGenerator[Any]:
    """Run ``plan`` with ``recorder`` subscribed (and closed afterwards) if ``own``."""
    if not own:
        return (yield from plan)
    token = yield from bps.subscribe("all", recorder)

    def cleanup() -> MsgGenerator[None]:
        yield from bps.unsubscribe(token)
        recorder.close()

    return (yield from bpp.finalize_wrapper(plan, cleanup))
