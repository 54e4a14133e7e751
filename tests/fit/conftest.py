"""Fixtures of the fit tests."""
from __future__ import annotations

import pytest
from libertem.api import Context


@pytest.fixture(scope="module")
def ctx():
    """An inline LiberTEM context, one per test module."""
    c = Context.make_with("inline")
    yield c
    c.close()
