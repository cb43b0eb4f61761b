"""Fixtures shared by the test files."""

import pytest

from pyarena import Heap
from pyarena import _testing


@pytest.fixture
def heap():
    """A private heap, closed after the test."""
    h = Heap()
    yield h
    h.close()


@pytest.fixture(autouse=True)
def every_heap_is_consistent():
    """After every test, Heap.check() on every heap still alive in the
    process: the page heap's counters, every span's bitmaps and counts, and
    the MemStats identities hold whatever the test did."""
    yield
    _testing.check_all_heaps()
