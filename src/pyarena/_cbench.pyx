# cython: language_level=3
"""C-level allocation loops for ``python -m pyarena bench`` and asv: the
allocator's C API beside libc malloc/free and PyMem_Malloc/PyMem_Free, timed
in C so that no Python call is in the loop. The heap is reached through
the public C-level API (`from pyarena cimport Heap`), as another package
reaches it. The engine of the bench's C-level table (_bench_c.py).
"""

from libc.stdlib cimport malloc as libc_malloc, free as libc_free
from libc.stdint cimport uint64_t
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from pyarena cimport Heap     # the public C-level API, as users see it

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    int CLOCK_MONOTONIC

# Every pointer is stored here, so that the compiler cannot prove a
# malloc/free pair dead and drop it (GCC does that for libc's).
cdef extern from *:
    """
    static void *volatile pyarena_bench_sink;
    """
    void* _sink "pyarena_bench_sink"


cdef inline uint64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef enum:
    PYARENA = 0
    LIBC = 1
    PYMEM = 2

KINDS = {"pyarena": PYARENA, "libc": LIBC, "pymem": PYMEM}


cdef inline void* alloc(int kind, Heap h, size_t size) noexcept:
    if kind == PYARENA:
        return h.malloc(size)
    if kind == LIBC:
        return libc_malloc(size)
    return PyMem_Malloc(size)


cdef inline void release(int kind, Heap h, void* p) noexcept:
    if kind == PYARENA:
        h.free(p)
    elif kind == LIBC:
        libc_free(p)
    else:
        PyMem_Free(p)


def pair_ns(str kind, size_t size, Py_ssize_t reps, Heap heap=None):
    """ns per malloc(size) + free pair, the pointer written once so that
    the memory is really used."""
    cdef int k = KINDS[kind]
    cdef Heap h = heap if heap is not None else Heap()
    cdef Py_ssize_t i
    cdef void* p
    global _sink
    cdef uint64_t t0 = now_ns()
    for i in range(reps):
        p = alloc(k, h, size)
        (<char*>p)[0] = <char>i
        _sink = p
        release(k, h, p)
    return (now_ns() - t0) / <double>reps


def batch_ns(str kind, size_t size, Py_ssize_t n, Heap heap=None):
    """ns per allocation for n mallocs followed by n frees (in allocation
    order), each block written once."""
    cdef int k = KINDS[kind]
    cdef Heap h = heap if heap is not None else Heap()
    cdef Py_ssize_t i
    cdef void** ptrs = <void**>libc_malloc(n * sizeof(void*))
    if ptrs == NULL:
        raise MemoryError
    global _sink
    cdef uint64_t t0 = now_ns()
    for i in range(n):
        ptrs[i] = alloc(k, h, size)
        (<char*>ptrs[i])[0] = <char>i
        _sink = ptrs[i]
    for i in range(n):
        release(k, h, ptrs[i])
    cdef uint64_t t = now_ns() - t0
    libc_free(ptrs)
    return t / <double>n
