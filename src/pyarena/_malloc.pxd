# Allocation and free entry points (Go: malloc.go). See _malloc.pyx.
from libc.stdint cimport uintptr_t
from pyarena._types cimport mheap, mcache, mspan

cdef uintptr_t zerobaseAddr() noexcept nogil
cdef uintptr_t mallocSmall(mcache* c, int sizeclass, size_t nbytes, bint needzero) noexcept nogil
cdef uintptr_t mallocTiny(mcache* c, size_t size) noexcept nogil
cdef mspan* mallocLarge(mcache* c, uintptr_t npages) noexcept nogil
cdef int freeObject(mheap* h, uintptr_t p, bint tiny) noexcept nogil
cdef int memclrNoHeapPointersChunked(char* p, size_t n) except -1
cdef int clearLarge(mheap* h, mspan* s, size_t nbytes) except -1
cdef bint isLive(mheap* h, uintptr_t p) noexcept nogil
cdef mspan* liveObject(mheap* h, uintptr_t p, uintptr_t* start, uintptr_t* size) noexcept nogil

# freeObject results
cdef enum:
    FREE_OK = 0
    FREE_NOT_IN_HEAP = -1
    FREE_NOT_OBJECT_START = -2
    FREE_NOT_ALLOCATED = -3
