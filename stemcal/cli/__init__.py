"""The command line, as a package: commands by group, shared argument types, one printer.

* :mod:`.main` -- the parser and the entry point (:func:`main`);
* :mod:`.args` -- the parser class, number and shape types, exit statuses;
* :mod:`.output` -- JSON and the printed record;
* :mod:`.offline` -- ``fit``, ``simulate``, ``demo``;
* :mod:`.acquire` -- ``calibrate``;
* :mod:`.records` -- ``history``, ``show``, ``export``, ``sync``;
* :mod:`.serve` -- ``serve``;
* :mod:`.app` -- ``app`` (the browser app, :mod:`stemcal.app`);
* :mod:`.spare`, :mod:`.spare_process` -- the spare command process that ``fit`` and
  ``calibrate`` leave for the next one, its imports done.
"""
from .args import EXIT_BAD_INPUT, EXIT_NO_FEATURES, CLIError
from .main import build_parser, main, run

__all__ = ["main", "run", "build_parser", "CLIError", "EXIT_BAD_INPUT", "EXIT_NO_FEATURES"]
