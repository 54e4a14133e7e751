# stemcal IPython profile: RunEngine, catalog and calibration recorder.
# Start with:  ipython --profile-dir=profiles/profile_stemcal
# Configuration: $STEMCAL_CONFIG or ~/.config/stemcal/config.toml (see README);
# without one, the simulated microscope and the embedded local catalog.
import bluesky.plan_stubs as bps  # noqa: F401
import bluesky.plans as bp  # noqa: F401

from stemcal.config import load_config
from stemcal.session import session_from_config

try:
    from bluesky_queueserver import is_re_worker_active as _is_re_worker_active
except ImportError:  # plain IPython without the queue server installed
    def _is_re_worker_active():
        return False
stemcal_config = load_config()
# In the queue server's RE Worker the RunEngine returns the run uids (the default of
# bluesky), not RunEngineResult(plan_result=CalibrationRecord): queueserver 0.0.25 pickles
# what RE() returns to the manager process, whose 0.5 s timeout the import of stemcal there
# exceeds, and the queue stops after the first calibrate. The result is not shown to
# queue-server users; the record is in the catalog.
session = session_from_config(stemcal_config, call_returns_result=not _is_re_worker_active())
RE = session.RE
catalog = session.client
recorder = session.recorder
if session.reconnector is not None:   # the catalog could not be opened at the start
    from stemcal.catalog import catalog_location_of

    print(f"stemcal: catalog {catalog_location_of(catalog)} unavailable ({catalog.reason}); "
          "runs and records are kept and go there once it is back (the first plan after "
          "that switches; session.reconnect() tries now)")
# What a person at the microscope sees while plans run: bluesky's own progress bars for
# whatever the RunEngine waits on (the calibration's fit reports its stages and passes),
# and BestEffortCallback's tables (the devices hint readable fields: overfocus in nm; each
# calibrate attempt adds a row with the fitted values). BEC's plots stay off: the
# recorder's live view is the figure. Not in the queue server's RE Worker, whose console
# output is a log, not a terminal.
if not _is_re_worker_active():
    from bluesky.callbacks.best_effort import BestEffortCallback
    from bluesky.utils import ProgressBarManager

    RE.waiting_hook = ProgressBarManager()
    bec = BestEffortCallback()
    bec.disable_plots()
    RE.subscribe(bec)
