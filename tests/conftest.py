"""Fixtures shared by the Bluesky tests."""
from __future__ import annotations

import pytest
from bluesky import RunEngine


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
