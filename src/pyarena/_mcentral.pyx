# cython: language_level=3
"""Central free lists: the spans of one size class that no thread is
allocating from (Go: mcentral.go). See _malloc.pyx for an overview.

partial holds spans with at least one free slot, counting slots freed but
not yet swept; full holds spans without. cacheSpan hands a span to an
mcache, sweeping it first so that its freed slots are allocatable, and
takes a fresh span from the page heap when partial is empty. uncacheSpan
takes a span back from an mcache.

Frees arrive one slot at a time (freeSlot). For a span no cache holds they
move it from full to partial on its first freed slot, and give its pages
back to the page heap when its last live slot dies, so that a class whose
objects all died does not keep memory that other sizes could use. Go gets
the same effect from sweeping every span once per GC cycle.
"""

from pyarena._types cimport (mheap, mspan, mcentral, inNoList, inPartial, inFull,
                             pyarena_class_to_allocnpages)
from pyarena._mspan cimport sweep, spanListPush, spanListRemove
from pyarena._mheap cimport allocSpan, freeSpan


cdef mspan* cacheSpan(mheap* h, int sizeclass) noexcept nogil:
    """A span of sizeclass with a free slot, swept, for an mcache; NULL
    when the page heap cannot supply one (Go: mcentral.cacheSpan)."""
    cdef mcentral* c = &h.central[sizeclass]
    cdef mspan* s = c.partial.first
    if s != NULL:
        spanListRemove(&c.partial, s)
        if s.nfreed:
            sweep(s)
            h.nsweeps += 1
    else:
        s = allocSpan(h, pyarena_class_to_allocnpages[sizeclass], sizeclass)
        if s == NULL:
            return NULL
        c.nspans += 1
    s.incache = 1
    return s


cdef inline void releaseIfEmpty(mheap* h, mcentral* c, mspan* s) noexcept nogil:
    c.nspans -= 1
    freeSpan(h, s)


cdef void uncacheSpan(mheap* h, mspan* s) noexcept nogil:
    """Take back a span an mcache was allocating from (Go:
    mcentral.uncacheSpan)."""
    cdef mcentral* c = &h.central[s.sizeclass]
    s.incache = 0
    if s.allocCount == s.nfreed:
        releaseIfEmpty(h, c, s)
    elif s.allocCount < s.nelems or s.nfreed:
        spanListPush(&c.partial, s, inPartial)
    else:
        spanListPush(&c.full, s, inFull)


cdef void freedUncached(mheap* h, mspan* s) noexcept nogil:
    """A slot of s, which no cache holds, was just freed (freeSlot's slow
    half): move s to partial, or give it back if nothing in it lives."""
    cdef mcentral* c = &h.central[s.sizeclass]
    if s.allocCount == s.nfreed:
        if s.list == inPartial:
            spanListRemove(&c.partial, s)
        elif s.list == inFull:
            spanListRemove(&c.full, s)
        releaseIfEmpty(h, c, s)
    elif s.list == inFull:
        spanListRemove(&c.full, s)
        spanListPush(&c.partial, s, inPartial)
