# Plans, as top-level names (bluesky-queueserver exposes only those).
#
# The names below are thin generator-function wrappers around stemcal.plans, so that the
# queue server lists them and a queue-server user can submit them with device names only:
#   * bluesky-queueserver takes a name as a plan only if it is a generator function
#     (bluesky.utils.is_plan); stemcal.plans.calibrate, verify_calibration and
#     recalibrate_if_stale are functions that check their arguments and return a generator.
#   * It turns a string argument into the device of that name only for parameters without
#     an annotation; the wrappers carry the plans' signatures and docstrings without
#     annotations.
#   * The session's catalog, recorder and DEFAULT_TOLERANCES are the defaults (they are
#     not devices, so they cannot be passed through the queue).
# The wrappers call the plans unchanged; arguments are checked when the RunEngine starts
# the plan (ValueError naming the parameter), before any device moves. In the RE Worker
# (where RE() returns run uids, see 00-base.py) they print a one-line result to the
# manager's console output.
import inspect as _inspect

import stemcal.plans as _plans
from stemcal.catalog import calibration_history, get_record, latest_calibration  # noqa: F401
from stemcal.runs import DEFAULT_TOLERANCES, optics_state  # noqa: F401
from stemcal.session import make_recorder as _make_recorder


def _queue_plan(plan, **defaults):
    """Give the wrapper ``plan``'s docstring and signature, without annotations,
    with the parameter defaults ``defaults`` replaced."""
    sig = _inspect.signature(plan)
    params = [p.replace(annotation=p.empty, default=defaults.get(p.name, p.default))
              for p in sig.parameters.values()]

    def decorate(func):
        func.__signature__ = sig.replace(parameters=params, return_annotation=sig.empty)
        func.__doc__ = plan.__doc__
        return func
    return decorate


def _report(plan_name, result):
    """Print the result of a plan in the queue server's console output; return it."""
    if _is_re_worker_active():
        if hasattr(result, "scan_rotation"):  # a CalibrationRecord
            text = (f"uid={result.uid} valid={result.valid} quality={result.quality!r} "
                    f"scan_rotation={result.scan_rotation:.4f} deg flip_y={result.flip_y} "
                    f"overfocus={result.overfocus:.6g} m")
        elif isinstance(result, dict) and "passed" in result:  # verify_calibration
            text = (f"passed={result['passed']} reason={result['reason']!r} "
                    f"record_uid={result['record_uid']}")
        else:
            text = repr(result)
        print(f"stemcal {plan_name}: {text}", flush=True)
    return result


def _session_recorder(callback, catalog_client):
    """(callback, subscribe): the session's recorder, unless the caller gave a callback or
    another catalog (then a recorder of that catalog, subscribed for the plan's duration)."""
    if callback is not None:
        return callback, False
    if catalog_client is None or catalog_client is catalog:
        return recorder, False
    return _make_recorder(catalog_client), True


# In this session scans are live by default (live=True): the recorder's live view shows the
# images while the frames arrive. live=False takes triggered scans (one 4D event each).
@_queue_plan(_plans.overfocus_scan, live=True)
def overfocus_scan(detector, scan, optics, *, live=True, **kwargs):
    return _report("overfocus_scan",
                   (yield from _plans.overfocus_scan(detector, scan, optics, live=live, **kwargs)))


@_queue_plan(_plans.calibrate, live=True)
def calibrate(detector, scan, optics, *, catalog_client=None, callback=None, live=True, **kwargs):
    # catalog_client: another catalog than the session's gets a recorder of its own
    callback, subscribe = _session_recorder(callback, catalog_client)
    kwargs.setdefault("subscribe", subscribe)
    return _report("calibrate", (yield from _plans.calibrate(
        detector, scan, optics, callback=callback, live=live, **kwargs)))


@_queue_plan(_plans.verify_calibration, record=None, live=True)
def verify_calibration(detector, scan, optics, record=None, *, callback=None, live=True,
                       **kwargs):
    # record: a CalibrationRecord, a record uid (prefix), or None: the one in force now.
    if record is None:
        record = latest_calibration(catalog, optics_state(optics.state(), scan.state()),
                                    DEFAULT_TOLERANCES)
        if record is None:
            raise ValueError("record: no valid calibration holds for the current optics "
                             "state; run calibrate first or give a record uid")
    elif isinstance(record, str):
        record = get_record(catalog, record)
    return _report("verify_calibration", (yield from _plans.verify_calibration(
        detector, scan, optics, record, callback=recorder if callback is None else callback,
        live=live, **kwargs)))


@_queue_plan(_plans.recalibrate_if_stale, catalog_client=None, tolerances=None)
def recalibrate_if_stale(detector, scan, optics, *, catalog_client=None, tolerances=None,
                         callback=None, **kwargs):
    client = catalog if catalog_client is None else catalog_client
    kwargs.setdefault("live", True)  # live scans in this session (see above)
    callback, subscribe = _session_recorder(callback, catalog_client)
    kwargs.setdefault("subscribe", subscribe)
    return _report("recalibrate_if_stale", (yield from _plans.recalibrate_if_stale(
        detector, scan, optics, catalog_client=client,
        tolerances=DEFAULT_TOLERANCES if tolerances is None else tolerances,
        callback=callback, **kwargs)))


def calibrate_here(**kwargs):
    """The calibrate plan with this session's devices, catalog and recorder."""
    return (yield from calibrate(detector, scan, optics, catalog_client=catalog,
                                 callback=recorder, **kwargs))


def recalibrate_here(tolerances=None, **kwargs):
    """recalibrate_if_stale with this session's devices and catalog."""
    return (yield from recalibrate_if_stale(detector, scan, optics, catalog_client=catalog,
                                            tolerances=tolerances or DEFAULT_TOLERANCES,
                                            callback=recorder, **kwargs))
