# Per-thread span caches (Go: mcache.go). See _mcache.pyx.
from libc.stdint cimport uintptr_t
from pyarena._types cimport mheap, mcache, mspan

cdef mcache* getmcacheSlow(mheap* h) noexcept nogil
cdef void releaseThreadCaches() noexcept nogil
cdef void onThreadCachesReleased(void (*hook)() noexcept nogil) noexcept nogil
cdef void releaseAll(mcache* c) noexcept nogil
cdef void dropLargeSpare(mcache* c) noexcept nogil
cdef void releaseTiny(mcache* c) noexcept nogil
cdef mspan* refill(mcache* c, int sizeclass) noexcept nogil
cdef uintptr_t nextFree(mcache* c, int sizeclass) noexcept nogil
cdef void* allocTinyRefs(mheap* h) noexcept nogil
