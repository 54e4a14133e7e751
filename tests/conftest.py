"""Fixtures shared by the tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from bluesky import RunEngine


@pytest.fixture(autouse=True, scope="session")
def _private_user_dirs(tmp_path_factory):
    """Per-user state, data and config directories of this test session, so that no
    test writes a spooled record, catalog or config into the real home directory; and
    no spare couriers (:mod:`stemcal.catalog.spare`) or spare command processes
    (:mod:`stemcal.cli.spare`) outliving the tests."""
    base = tmp_path_factory.mktemp("xdg")
    xdg = ("XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME")
    saved = {k: os.environ.get(k) for k in (*xdg, "STEMCAL_COURIER_SPARE", "STEMCAL_COMMAND_SPARE")}
    for key in xdg:
        os.environ[key] = str(base / key.lower())
    # no spares left behind by the tests' commands (tests/catalog/test_spare.py and
    # tests/cli/test_command_spare.py turn them on where they test them)
    os.environ["STEMCAL_COURIER_SPARE"] = "0"
    os.environ["STEMCAL_COMMAND_SPARE"] = "0"
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def RE():
    """A fresh RunEngine whose plans' return values come back in the result."""
    return RunEngine({}, call_returns_result=True)


@pytest.fixture
def docs(RE):
    """Every (name, doc) the RunEngine emits, in order."""
    collected: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: collected.append((name, doc)))
    return collected


@pytest.fixture(scope="session")
def multislice_cache(tmp_path_factory) -> Path:
    """Where this session keeps the noise-free multislice frames it generates
    (``tests/multislice``): ``$STEMCAL_WAVE_CACHE`` if set (kept across sessions), else a
    directory of this session, so that each case is simulated once per session."""
    env = os.environ.get("STEMCAL_WAVE_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("multislice")
