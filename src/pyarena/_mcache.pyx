# cython: language_level=3
"""Per-thread caches (Go: mcache.go). See _malloc.pyx for an overview.

Go gives each P an mcache; with the GIL a Python process has one P at a
time, but pyarena still keeps one cache per thread and heap so that the fast
path never shares state, and so that dropping the GIL later (free-threaded
Python, the nogil C API) does not change the design. An mcache holds, per
size class, the span it allocates from, plus the current tiny block. Only
its own thread touches it, so allocation from it takes no lock.

When a cached span has no free slot left, refill first sweeps it in place if
slots in it were freed meanwhile (cheap: at most 16 words), and otherwise
hands it back to mcentral and takes another. When the thread ends (or the
heap is destroyed) releaseAll returns every span and the tiny block, and the
cache's counts are folded into the heap's.
"""

from libc.stdint cimport uintptr_t
from pyarena._types cimport (mheap, mcache, mspan, mSpanDead, NUM_SIZE_CLASSES,
                             TINY_SIZE_CLASS)
from pyarena._mfixalloc cimport fixalloc_alloc, fixalloc_free
from pyarena._mspan cimport nextFreeIndex, sweep, objIndex
from pyarena._mcentral cimport cacheSpan, uncacheSpan, freeSlot


# The span every empty cache entry points at (Go: emptymspan): no slots, so
# nextFreeFast fails on it and the slow path refills, with no NULL checks on
# the fast path. Its state is mSpanDead, which refill uses to recognise it.
cdef mspan emptymspan


cdef mcache* allocmcache(mheap* h) noexcept nogil:
    """A new cache of h linked into h.caches, or NULL without memory."""
    cdef mcache* c = <mcache*>fixalloc_alloc(&h.cachealloc)
    cdef int i
    if c == NULL:
        return NULL
    c.heap = h
    for i in range(NUM_SIZE_CLASSES):
        c.alloc[i] = &emptymspan
    c.next = h.caches
    c.prev = NULL
    if h.caches != NULL:
        h.caches.prev = c
    h.caches = c
    return c


cdef void releaseTiny(mcache* c) noexcept nogil:
    """Drop the cache's own reference to its tiny block."""
    cdef mspan* s = c.tinyspan
    cdef unsigned int idx
    if c.tiny == 0:
        return
    idx = <unsigned int>objIndex(s, c.tiny)
    s.tinyRefs[idx] -= 1
    c.tiny = 0
    c.tinyoffset = 0
    c.tinyspan = NULL
    if s.tinyRefs[idx] == 0:
        c.heap.freedBytes += s.elemsize
        freeSlot(c.heap, s, idx)


cdef void releaseAll(mcache* c) noexcept nogil:
    """Give every cached span and the tiny block back (Go:
    mcache.releaseAll)."""
    cdef int i
    cdef mspan* s
    releaseTiny(c)
    for i in range(NUM_SIZE_CLASSES):
        s = c.alloc[i]
        if s.state != mSpanDead:
            uncacheSpan(c.heap, s)
        c.alloc[i] = &emptymspan


cdef void freemcache(mcache* c) noexcept nogil:
    """Release everything and free the cache; its counts go to the heap
    (Go: freemcache, when a P is destroyed)."""
    cdef mheap* h = c.heap
    cdef int i
    releaseAll(c)
    for i in range(NUM_SIZE_CLASSES):
        h.retiredMalloc[i] += c.nmalloc[i]
    h.retiredAllocBytes += c.allocBytes
    if c.prev != NULL:
        c.prev.next = c.next
    else:
        h.caches = c.next
    if c.next != NULL:
        c.next.prev = c.prev
    fixalloc_free(&h.cachealloc, c)


cdef mspan* refill(mcache* c, int sizeclass) noexcept nogil:
    """Make c.alloc[sizeclass] a span with a free slot; NULL when there is no
    memory for one (Go: mcache.refill)."""
    cdef mspan* s = c.alloc[sizeclass]
    if s.state != mSpanDead:
        if s.nfreed:
            sweep(s)
            c.heap.nsweeps += 1
            if s.allocCount < s.nelems:
                return s
        uncacheSpan(c.heap, s)
        c.alloc[sizeclass] = &emptymspan
    s = cacheSpan(c.heap, sizeclass)
    if s == NULL:
        return NULL
    c.alloc[sizeclass] = s
    return s


cdef uintptr_t nextFree(mcache* c, int sizeclass) noexcept nogil:
    """The slow path of nextFreeFast: the next free slot of the cached span,
    refilling the cache when the span is full; 0 without memory (Go:
    mcache.nextFree)."""
    cdef mspan* s = c.alloc[sizeclass]
    cdef unsigned int idx = nextFreeIndex(s)
    if idx == s.nelems:
        s = refill(c, sizeclass)
        if s == NULL:
            return 0
        idx = nextFreeIndex(s)
    s.allocCount += 1
    return s.startAddr + <uintptr_t>idx * s.elemsize
