"""Fixtures shared by the test files."""

import pytest

from pyarena import Heap


@pytest.fixture
def heap():
    """A private heap, closed after the test."""
    h = Heap()
    yield h
    h.close()
