# Heap profiling: sampling, buckets, sampled objects (Go: mprof.go and the
# sampling of malloc.go). See _mprof.pyx.
from libc.stdint cimport int64_t, uint64_t, uint32_t, uintptr_t
from pyarena._types cimport mheap, mcache, mspan

cdef enum:
    # Go: MemProfileRate, bytes per sample on average.
    MEM_PROFILE_RATE = 512 * 1024
    # A countdown that never runs out (profiling off).
    NEVER = 0x7fffffffffffffff

# Samplers (Go: cheaprand, fastexprand, nextSample, nextSampleNoFP).
cdef uint32_t cheaprand(uint64_t* state) noexcept nogil
cdef int64_t fastexprand(int64_t mean, uint32_t u) noexcept nogil
cdef int64_t nextSampleNoFP(int64_t rate, uint32_t u) noexcept nogil
cdef int64_t nextSample(mheap* h, mcache* c, int64_t rate) noexcept nogil

# The allocation that ran a cache's countdown out (Go: profilealloc), and
# the free of a sampled object.
cdef void mallocEvent(mcache* c, uintptr_t p, uintptr_t slot, mspan* s) noexcept nogil
cdef uintptr_t mallocEventP(mcache* c, uintptr_t p, uintptr_t slot, mspan* s) noexcept nogil
cdef void armCache(mheap* h, mcache* c) noexcept nogil
cdef void profilefree(mheap* h, mspan* s, uintptr_t p) noexcept nogil
cdef void mprofDestroy(mheap* h) noexcept
cdef object profileRecords(mheap* h, object code_frame, tuple truncated)
cdef void setProfileRate(mheap* h, int64_t rate) noexcept nogil
# A debug heap's reports: the bucket of a sampled live object, its stack.
cdef void* sampleOf(mheap* h, uintptr_t p) noexcept nogil
cdef object bucketStack(void* bucket)


cdef inline void countAlloc(mcache* c, uintptr_t p, uintptr_t slot, mspan* s) noexcept nogil:
    """Every allocation path ends here: slot bytes off the cache's
    countdown (Go: c.nextSample -= size). With profiling off the countdown
    never runs out; between samples this is one subtraction and one
    branch that is not taken."""
    c.nextEvent -= <int64_t>slot
    if c.nextEvent < 0:
        mallocEvent(c, p, slot, s)


cdef inline bint countdown(mcache* c, uintptr_t slot) noexcept nogil:
    """countAlloc for the fast paths, which end with
    `if countdown(c, slot): return mallocEventP(c, v, slot, s)`: a tail
    call, so that the path saves no register for the rare event."""
    c.nextEvent -= <int64_t>slot
    return c.nextEvent < 0
