# Clearing ahead of time, and knowing what is still zero. See _mzero.pyx.
from libc.stdint cimport uint64_t, uintptr_t, int64_t
from pyarena._types cimport mheap, mspan

cdef extern from *:
    """
    struct pyarena_page_region { unsigned long long start, end, categories; };
    """
    struct pageRegion "pyarena_page_region":
        unsigned long long start
        unsigned long long end
        unsigned long long categories

# What may hold old data.
cdef long dirtyRegions(uintptr_t a, uintptr_t b, pageRegion* out, long n,
                       uintptr_t* walkEnd) noexcept nogil
cdef void clearMemory(uintptr_t p, size_t n) noexcept nogil
cdef uintptr_t clearDirty(uintptr_t a, uintptr_t b) noexcept nogil

# The zeroing queue and its worker.
cdef bint prezeroDefault() noexcept nogil
cdef void zeroEnable(mheap* h) noexcept nogil
cdef bint zeroKeep(mheap* h, mspan* s) noexcept nogil
cdef mspan* zeroTake(mheap* h, uintptr_t npages) noexcept nogil
cdef void zeroFlush(mheap* h) noexcept nogil
cdef bint zeroFlushIdle(mheap* h, int64_t idleNs) noexcept nogil
cdef void zeroDisable(mheap* h) noexcept nogil
cdef uintptr_t zeroCheck(mheap* h) noexcept nogil
cdef void zeroWorkerInfo(int* running, int* sleeping, uint64_t* wakeups, int* idle) noexcept nogil
cdef void zeroStop() noexcept nogil
cdef void zeroSetIdle(int verdict) noexcept nogil
