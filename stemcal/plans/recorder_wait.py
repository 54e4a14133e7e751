"""How a plan waits for the recorder: the status of a run's calibration, through the RunEngine.

The plans depend on the recorder only by duck typing (``result_status(run_uid)``,
see :class:`stemcal.callbacks.CalibrationRecorder`); the caller builds it
(:func:`stemcal.session.make_recorder`) and either subscribes it to the
RunEngine or lets the plan subscribe it for its duration (``subscribe=True``).
"""
from __future__ import annotations

from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import FailedStatus, MsgGenerator, short_uid

__all__ = ["wait_status", "check_recorder", "status_of", "subscribed"]


class _Awaited:
    """A status to wait on, in the shape of something a plan triggers.

    The RunEngine hands the statuses of a wait group (``Msg('wait', group)``)
    to ``RE.waiting_hook`` -- where bluesky's
    :class:`~bluesky.utils.ProgressBarManager` draws their progress -- but a
    status joins a group only as what a message like ``trigger`` returns. The
    recorder's status is not the plan's to start, so this returns the status
    that is already running.
    """

    def __init__(self, status: Any, name: str) -> None:
        self.status = status
        self.name = name
        self.parent = None

    def trigger(self) -> Any:
        return self.status

    def __repr__(self) -> str:
        return f"<{self.name}>"


def wait_status(status: Any, timeout: float | None, what: str) -> MsgGenerator[None]:
    """Wait (through the RunEngine, not blocking its loop) for an ophyd status to finish.

    The status goes into a wait group of its own, so that ``RE.waiting_hook``
    (e.g. a :class:`~bluesky.utils.ProgressBarManager`) sees it and can show
    its progress (:meth:`stemcal.callbacks.ResultStatus.watch`). A failed
    status does not raise here: its ``result`` (or ``exception()``) says why.

    Raises
    ------
    TimeoutError
        Not done within ``timeout`` seconds.
    """
    group = short_uid("calibration")
    yield from bps.trigger(_Awaited(status, what), group=group)
    try:
        yield from bps.wait(group=group, timeout=timeout)
    except FailedStatus:
        pass  # the caller reads the status's exception
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
