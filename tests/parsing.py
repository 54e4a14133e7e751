"""Parsing ``stemcal`` arguments with the real parser, for tests (shared by the test files)."""
from __future__ import annotations

import argparse
import contextlib
import io

from stemcal.cli import build_parser


def parse(argv: list[str]) -> tuple[argparse.Namespace | None, str]:
    """(namespace or None, stderr) of parsing ``argv`` with stemcal's parser; a refusal
    must exit with status 2."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            return build_parser().parse_args(argv), err.getvalue()
        except SystemExit as exc:
            assert exc.code == 2, exc.code
            return None, err.getvalue()
