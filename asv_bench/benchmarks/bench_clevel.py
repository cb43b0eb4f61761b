"""The C-level API and NumPy's data allocator, against what they replace.

- ``CLevel.track_pair`` and ``CLevel.track_batch``: nanoseconds per
  operation of ``Heap.malloc``/``Heap.free`` beside libc ``malloc``/``free``
  and ``PyMem_Malloc``/``PyMem_Free``, each measured in a C loop
  (``pyarena._cbench``) so that no Python call is timed. ``pair`` is one
  malloc + free pair (``PAIR_REPS`` of them per call); ``batch`` is
  ``BATCH_N`` mallocs followed by ``BATCH_N`` frees, per allocation. Each
  block is written once. The value is the median of ``CALLS`` calls, after
  one untimed call in ``setup``.
- ``Temporaries.time_numpy_temporaries`` and
  ``TemporariesPeakmem.peakmem_numpy_temporaries``: NumPy arithmetic that
  makes temporaries (``c = a * 2.0 + b; d = np.sqrt(c); e = (d - a) * b``)
  on float64 arrays of 1 KiB to 64 MiB, with NumPy's default data allocator
  and with a pyarena heap installed as NumPy's allocator
  (``pyarena.numpy_allocator``).
"""

import contextlib
import statistics

import numpy as np

import pyarena
from pyarena import _cbench

#: The allocators of the C-level loops (``_cbench.KINDS``).
KINDS = ["pyarena", "libc", "pymem"]
#: Request sizes of the C-level loops, in bytes.
C_SIZES = [16, 64, 256, 1024, 8192]
PAIR_REPS = 200_000
BATCH_N = 100_000
#: Calls per measurement; the median is reported.
CALLS = 5

#: NumPy data allocators: NumPy's own, or a pyarena heap.
HANDLERS = ["numpy", "pyarena"]
#: Byte sizes of the float64 arrays of the temporaries workload.
TEMP_SIZES = {
    "1 KiB": 1 << 10,
    "16 KiB": 16 << 10,
    "256 KiB": 256 << 10,
    "4 MiB": 4 << 20,
    "64 MiB": 64 << 20,
}


class CLevel:
    """ns per operation of the C-level allocators (median of 5 C loops).

    The pyarena loops run on a private ``Heap`` made in ``setup``; the
    other kinds ignore it.
    """

    params = [KINDS, C_SIZES]
    param_names = ["kind", "size"]
    unit = "ns"
    timeout = 300

    def setup(self, kind, size):
        self.heap = pyarena.Heap()
        # Untimed first calls: map and fault in the memory the loops use.
        _cbench.pair_ns(kind, size, 1000, self.heap)
        _cbench.batch_ns(kind, size, BATCH_N, self.heap)

    def teardown(self, kind, size):
        self.heap.close()

    def track_pair(self, kind, size):
        return statistics.median(
            _cbench.pair_ns(kind, size, PAIR_REPS, self.heap) for _ in range(CALLS))

    def track_batch(self, kind, size):
        return statistics.median(
            _cbench.batch_ns(kind, size, BATCH_N, self.heap) for _ in range(CALLS))


def temporaries(a, b):
    """The workload: three expressions, five temporary arrays."""
    c = a * 2.0 + b
    d = np.sqrt(c)
    e = (d - a) * b
    return e


class _TemporariesBase:
    params = [HANDLERS, list(TEMP_SIZES)]
    param_names = ["handler", "size"]
    warm = False

    def setup(self, handler, size):
        n = TEMP_SIZES[size] // 8
        self.heap = None
        self.cm = contextlib.nullcontext()
        if handler == "pyarena":
            # The block is entered here and left in teardown (asv calls
            # the two around every timed call), so the timed call pays
            # only for the arithmetic, not for entering the block.
            self.heap = pyarena.Heap()
            self.cm = pyarena.numpy_allocator(self.heap)
        self.cm.__enter__()
        self.a = np.ones(n)
        self.b = np.full(n, 0.5)
        if self.warm:
            temporaries(self.a, self.b)

    def teardown(self, handler, size):
        del self.a, self.b
        self.cm.__exit__(None, None, None)
        if self.heap is not None:
            self.heap.close()


class Temporaries(_TemporariesBase):
    """Time of the temporaries workload on float64 arrays of ``size``
    bytes.

    For ``handler="pyarena"``, ``setup`` makes a private heap and enters
    ``pyarena.numpy_allocator(heap)``: the inputs and every temporary come
    from the heap. ``setup`` also runs the workload once untimed, so that
    the timed call finds either allocator in its steady state (memory
    mapped and faulted in).
    """

    warm = True

    def time_numpy_temporaries(self, handler, size):
        temporaries(self.a, self.b)


class TemporariesPeakmem(_TemporariesBase):
    """Peak resident memory of a process running the temporaries workload
    once on float64 arrays of ``size`` bytes. The inputs, made in
    ``setup`` (under the heap's allocator for ``"pyarena"``), count in it,
    and so do the interpreter, NumPy and pyarena, the same for both
    handlers."""

    def peakmem_numpy_temporaries(self, handler, size):
        temporaries(self.a, self.b)
