"""Arenas against the heap: many small values that live and die together.

- ``Zeros.time_zeros``: 10,000 ``zeros(8, uint8)`` per call, all kept
  alive, from an ``Arena``, from the heap (``Heap.zeros``) and from
  ``numpy.zeros``.
- ``New.time_new``: 10,000 ``new(Point)`` per call (a 24-byte ctypes
  Structure), all kept alive, from an ``Arena`` and from the heap
  (``Heap.new``).
- ``Drop.time_drop``: dropping 100,000 such arrays, made in ``setup``:
  for the arena ``del values`` then ``Arena.free()``, for the heap and
  NumPy ``del values`` (each array's data goes back on its own).

Everything is on the default heap, as for ``bench_zeros``; the arenas use
the default 8 MiB chunks. The values a timed call keeps are dropped in
``teardown``, not in the timed call, and the arena is freed there too.
"""

import ctypes

import numpy as np

import pyarena

#: Values made per timed call by ``Zeros`` and ``New``.
N_KEEP = 10_000
#: Values dropped per timed call by ``Drop``.
N_DROP = 100_000
#: Bytes of each array (a uint8 array of this length).
NBYTES = 8


class Point(ctypes.Structure):
    """24 bytes, 8-aligned."""

    _fields_ = [("x", ctypes.c_double), ("y", ctypes.c_double), ("z", ctypes.c_double)]


assert ctypes.sizeof(Point) == 24


def _source(lib):
    """(allocator object, arena or None) for ``lib``."""
    if lib == "arena":
        arena = pyarena.Arena()
        return arena, arena
    if lib == "heap":
        return pyarena.default_heap(), None
    if lib == "numpy":
        return np, None
    raise ValueError(f"unknown library {lib!r}")


class _Keep:
    """Values made by the timed calls are appended to ``self.kept`` and
    dropped in ``teardown``, so that no timed call pays for dropping the
    values of the call before it."""

    def setup(self, lib):
        self.src, self.arena = _source(lib)
        self.kept = []
        # Untimed: bring the allocator to its steady state (memory mapped
        # and faulted in; for the arena, its first chunk taken).
        self._run()
        self.kept.clear()

    def teardown(self, lib):
        self.kept.clear()
        if self.arena is not None:
            self.arena.free()


class Zeros(_Keep):
    """10,000 ``zeros(8, uint8)`` per call, kept alive."""

    params = [["arena", "heap", "numpy"]]
    param_names = ["lib"]

    def _run(self):
        zeros = self.src.zeros
        u8 = np.uint8
        self.kept.append([zeros(NBYTES, u8) for _ in range(N_KEEP)])

    def time_zeros(self, lib):
        self._run()


class New(_Keep):
    """10,000 ``new(Point)`` (24-byte ctypes Structure) per call, kept
    alive."""

    params = [["arena", "heap"]]
    param_names = ["lib"]

    def _run(self):
        new = self.src.new
        self.kept.append([new(Point) for _ in range(N_KEEP)])

    def time_new(self, lib):
        self._run()


class Drop:
    """Drop 100,000 ``zeros(8, uint8)`` arrays made in ``setup``.

    ``number = 1``: asv runs ``setup`` before every timed call, which
    finds a fresh set of values to drop. For the arena the call is ``del
    values`` then ``Arena.free()`` (the chunk goes back to the heap's
    pool); for the heap and NumPy it is ``del values``, which frees each
    array's data on its own.
    """

    params = [["arena", "heap", "numpy"]]
    param_names = ["lib"]
    number = 1
    repeat = (5, 20, 10.0)
    warmup_time = 0

    def setup(self, lib):
        self.src, self.arena = _source(lib)
        zeros = self.src.zeros
        u8 = np.uint8
        self.values = [zeros(NBYTES, u8) for _ in range(N_DROP)]

    def teardown(self, lib):
        self.values = None
        if self.arena is not None:
            self.arena.free()

    def time_drop(self, lib):
        del self.values
        if self.arena is not None:
            self.arena.free()
