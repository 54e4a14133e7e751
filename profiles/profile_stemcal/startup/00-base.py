# stemcal IPython profile: RunEngine, catalog and calibration recorder.
# Start with:  ipython --profile-dir=profiles/profile_stemcal
# Configuration: $STEMCAL_CONFIG or ~/.config/stemcal/config.toml (see README);
# without one, the simulated microscope and the embedded local catalog.
import bluesky.plan_stubs as bps  # noqa: F401
import bluesky.plans as bp  # noqa: F401

from stemcal.session import load_config, session_from_config

stemcal_config = load_config()
session = session_from_config(stemcal_config)
RE = session.RE
catalog = session.client
recorder = session.recorder
