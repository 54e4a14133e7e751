"""``python -m stemcal.cli``."""
import sys

from .main import main

sys.exit(main())
