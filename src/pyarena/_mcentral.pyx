# cython: language_level=3
"""Central free lists: the spans of one size class that no thread is
allocating from (Go: mcentral.go). See _malloc.pyx for an overview.

partial holds spans with at least one free slot, counting slots freed but
not yet swept; full holds spans without. cacheSpan hands a span to an
mcache, sweeping it first so that its freed slots are allocatable, and
takes a fresh span from the page heap when partial is empty. uncacheSpan
takes a span back from an mcache.

Frees arrive one slot at a time (freeSlot, from any thread). For a span no
cache holds they move it from full to partial on its first freed slot, and
give its pages back to the page heap when its last live slot dies, so that
a class whose objects all died does not keep memory that other sizes could
use. Go gets the same effect from sweeping every span once per GC cycle.
Emptied spans are kept as the class's spares instead, up to SPARE_BYTES
(256 KiB) a class: code that makes and drops many arrays at a time would
otherwise send every span through the page heap and back, and for the
classes whose spans hold one or two objects (8 KiB and up) every other
allocation would be such a trip. Spares count as idle memory and go back
on Heap.release() and close().

Every function here takes the class's lock (see "Locking" in _types.pxd).
"""

from libc.stdint cimport int32_t
from pyarena._types cimport (mheap, mspan, mcentral, inNoList, inPartial, inFull, inSpare,
                             PAGE_SHIFT, SPARE_BYTES,
                             mSpanInUse, NUM_SIZE_CLASSES,
                             pyarena_class_to_allocnpages, pa_lock, pa_unlock, pa_load32,
                             pa_load8, pa_store8, pa_add64)
from pyarena._mspan cimport sweep, spanListPush, spanListAppend, spanListRemove
from pyarena._mheap cimport allocSpan, freeSpan


cdef mspan* cacheSpan(mheap* h, int sizeclass) noexcept nogil:
    """A span of sizeclass with a free slot, swept, for an mcache; NULL
    when the page heap cannot supply one (Go: mcentral.cacheSpan)."""
    cdef mcentral* c = &h.central[sizeclass]
    cdef mspan* s
    pa_lock(&c.lock)
    while True:
        s = c.partial.first
        if s == NULL:
            break
        spanListRemove(&c.partial, s)
        if pa_load32(&s.nfreed) > 0:
            sweep(s)
            pa_add64(&h.nsweeps, 1)
        if s.allocCount < s.nelems:
            break
        # Its frees were still in flight (bit set, count not yet landed):
        # the span is full for now; the count's arrival moves it back.
        spanListPush(&c.full, s, inFull)
    if s == NULL and c.spares.first != NULL:
        s = c.spares.first
        spanListRemove(&c.spares, s)
        c.sparePages -= s.npages
        pa_add64(&h.pagesSpare, -s.npages)
    if s == NULL:
        s = allocSpan(h, pyarena_class_to_allocnpages[sizeclass], sizeclass)
        if s == NULL:
            pa_unlock(&c.lock)
            return NULL
        c.nspans += 1
    pa_store8(&s.incache, 1)
    pa_unlock(&c.lock)
    return s


cdef inline void releaseEmpty(mheap* h, mcentral* c, mspan* s) noexcept nogil:
    # Under c.lock; freeSpan takes the heap lock (central -> heap). Every
    # free into s has landed (its bit is set before it is counted), so a
    # sweep leaves it with nothing allocated.
    if c.spares.first == NULL or (c.sparePages + s.npages) << PAGE_SHIFT <= SPARE_BYTES:
        sweep(s)
        spanListPush(&c.spares, s, inSpare)
        c.sparePages += s.npages
        pa_add64(&h.pagesSpare, s.npages)
        return
    c.nspans -= 1
    freeSpan(h, s)


cdef void releaseSpares(mheap* h) noexcept nogil:
    """Give every class's spare span back to the page heap (before pages
    are released to the OS)."""
    cdef int i
    cdef mcentral* c
    cdef mspan* s
    for i in range(1, NUM_SIZE_CLASSES):
        c = &h.central[i]
        pa_lock(&c.lock)
        s = c.spares.first
        while s != NULL:
            spanListRemove(&c.spares, s)
            pa_add64(&h.pagesSpare, -s.npages)
            c.nspans -= 1
            freeSpan(h, s)
            s = c.spares.first
        c.sparePages = 0
        pa_unlock(&c.lock)


cdef void uncacheSpan(mheap* h, mspan* s) noexcept nogil:
    """Take back a span an mcache was allocating from (Go:
    mcentral.uncacheSpan)."""
    cdef mcentral* c = &h.central[s.sizeclass]
    cdef int32_t nfreed
    pa_lock(&c.lock)
    # No thread frees locally from here on (the owner is the caller).
    s.ownerThread = 0
    s.cache = NULL
    if s.nfreedLocal:
        # The owner's own frees must become visible before it lets go.
        sweep(s)
    pa_store8(&s.incache, 0)
    nfreed = pa_load32(&s.nfreed)
    if s.allocCount == nfreed:
        releaseEmpty(h, c, s)
    elif s.allocCount < s.nelems or nfreed > 0:
        # At the back: spans that have waited longer hold more frees.
        spanListAppend(&c.partial, s, inPartial)
    else:
        spanListPush(&c.full, s, inFull)
    pa_unlock(&c.lock)


cdef void freedUncached(mheap* h, mspan* s, int sizeclass) noexcept nogil:
    """A slot of s was freed and s looked uncached (freeSlot's slow half):
    move s from full to partial, or give its pages back if nothing in it
    lives. Decided under the class's lock on the span as it is then: by the
    time the lock is held another thread may have cached s, or freed it and
    reused the record, so the record is checked first."""
    cdef mcentral* c = &h.central[sizeclass]
    cdef int32_t nfreed
    pa_lock(&c.lock)
    if s.state != mSpanInUse or s.sizeclass != sizeclass or pa_load8(&s.incache):
        pa_unlock(&c.lock)
        return
    nfreed = pa_load32(&s.nfreed)
    if s.allocCount == nfreed:
        if s.list == inPartial:
            spanListRemove(&c.partial, s)
            releaseEmpty(h, c, s)
        elif s.list == inFull:
            spanListRemove(&c.full, s)
            releaseEmpty(h, c, s)
    elif s.list == inFull and nfreed > 0:
        spanListRemove(&c.full, s)
        spanListPush(&c.partial, s, inPartial)
    pa_unlock(&c.lock)
