"""pyarena: the Go runtime's memory allocator, rebuilt in Cython for Python.

Size classes, spans with 64-bit allocCache bitmaps, per-thread caches and a
page heap on mmapped memory, with Python's reference counts standing in for
Go's garbage collector.

>>> import pyarena
>>> b = pyarena.alloc(64)          # a zeroed, writable 64-byte Block
>>> memoryview(b)[0] = 1
>>> pyarena.size_class(64)
(6, 64)
"""

from pyarena._mem import PHYS_PAGE_SIZE, PHYS_HUGE_PAGE_SIZE, PHYS_HUGE_PAGE_SHIFT
from pyarena._sizeclasses import (
    PAGE_SIZE_ as PAGE_SIZE,
    MAX_SMALL_SIZE_ as MAX_SMALL_SIZE,
    NUM_SIZE_CLASSES_ as NUM_SIZE_CLASSES,
    SizeClass,
    size_class,
    size_classes,
)
from pyarena._mstats import MemStats, SizeClassStats
from pyarena._face import Allocator, Block
from pyarena._mcheck import HeapCorruptionError, HeapProblem
from pyarena._mdebug import HeapCorruptionWarning, redzone_size
from pyarena._heap import (
    Heap, alloc, default_heap, release, stats,
    zeros, empty, full, zeros_like, empty_like, full_like,
)

from pyarena._pprof import HeapProfile, HeapSample, Frame, MEM_PROFILE_RATE
from pyarena._arena import Arena, ArenaStats
from pyarena import reflect
from pyarena._numpy_allocator import (
    numpy_allocator, install_numpy_allocator, uninstall_numpy_allocator, tune_malloc,
)

__version__ = "0.1.0"

# tracemalloc's domain for what pyarena allocates and NumPy does not free
# (Blocks, typed values, arena chunks): tracemalloc.DomainFilter(True,
# pyarena.tracemalloc_domain). Arrays are traced in NumPy's domain,
# numpy.lib.tracemalloc_domain, as NumPy's own are.
tracemalloc_domain = 0x70796172


def get_include() -> str:
    """The directory holding pyarena's .pxd files and C headers, for
    ``include_dirs`` when compiling code that does ``cimport pyarena``."""
    import os

    return os.path.dirname(os.path.abspath(__file__))

__all__ = [
    "Allocator", "Block", "Heap", "HeapCorruptionError", "HeapCorruptionWarning", "HeapProblem", "MemStats", "SizeClass", "SizeClassStats",
    "alloc", "default_heap", "zeros", "empty", "full", "zeros_like", "empty_like",
    "full_like", "numpy_allocator", "install_numpy_allocator", "uninstall_numpy_allocator",
    "tune_malloc", "HeapProfile", "HeapSample", "Frame", "MEM_PROFILE_RATE", "tracemalloc_domain",
    "get_include", "Arena", "ArenaStats", "reflect", "release", "stats", "size_class", "size_classes", "redzone_size",
    "PAGE_SIZE", "MAX_SMALL_SIZE", "NUM_SIZE_CLASSES",
    "PHYS_PAGE_SIZE", "PHYS_HUGE_PAGE_SIZE", "PHYS_HUGE_PAGE_SHIFT",
]
