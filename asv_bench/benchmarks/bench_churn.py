"""Churn: 10,000 arrays of mixed sizes with a bounded live set.

The stream is fixed (see ``common.churn_plan``): log-uniform sizes from
8 B to 256 KiB, each array written once per 4 KiB and kept in one of 256
slots until a later array takes the slot.
"""

import pyarena

from .common import LIBS, churn, churn_plan, constructors


class Churn:
    """Time of the churn stream, after one untimed run of it."""

    params = [LIBS]
    param_names = ["lib"]

    def setup(self, lib):
        self.zeros = constructors(lib)[0]
        self.plan = churn_plan()
        churn(self.zeros, self.plan)

    def time_churn(self, lib):
        churn(self.zeros, self.plan)


class ChurnPeakmem:
    """Peak resident memory of a process that runs the churn stream once.

    The figure includes the interpreter, NumPy and pyarena themselves, the
    same for both libraries; the difference is the allocator's.
    """

    params = [LIBS]
    param_names = ["lib"]

    def setup(self, lib):
        self.zeros = constructors(lib)[0]
        self.plan = churn_plan()

    def peakmem_churn(self, lib):
        churn(self.zeros, self.plan)


class ChurnHeapStats:
    """A private ``pyarena.Heap`` after the churn stream (Go's MemStats).

    ``heap_*`` are read while the last live set is still alive;
    ``released`` is what ``Heap.release()`` gives back after the live set
    has been dropped. ``requested`` is the bytes the live set asked for,
    to compare with ``heap_alloc``.
    """

    unit = "bytes"

    def setup_cache(self):
        heap = pyarena.Heap()
        live = churn(heap.zeros, churn_plan())
        st = heap.stats()
        result = dict(
            heap_sys=st.heap_sys,
            heap_alloc=st.heap_alloc,
            heap_inuse=st.heap_inuse,
            heap_idle=st.heap_idle,
            requested=sum(a.nbytes for a in live if a is not None),
        )
        del live
        result["released"] = heap.release()
        heap.close()
        return result

    def track_heap_sys(self, result):
        return result["heap_sys"]

    def track_heap_alloc(self, result):
        return result["heap_alloc"]

    def track_heap_inuse(self, result):
        return result["heap_inuse"]

    def track_heap_idle(self, result):
        return result["heap_idle"]

    def track_requested(self, result):
        return result["requested"]

    def track_released(self, result):
        return result["released"]
