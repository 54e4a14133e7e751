"""``python -m stemcal.cli``."""
from .main import run

run()
