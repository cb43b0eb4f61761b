# Central span lists, one per size class (Go: mcentral.go). See _mcentral.pyx.
from libc.stdint cimport int32_t
from pyarena._types cimport mheap, mspan, pa_or64, pa_add32, pa_load8

cdef mspan* cacheSpan(mheap* h, int sizeclass) noexcept nogil
cdef void uncacheSpan(mheap* h, mspan* s) noexcept nogil
cdef void releaseSpares(mheap* h) noexcept nogil
cdef void freedUncached(mheap* h, mspan* s, int sizeclass) noexcept nogil


cdef inline bint freeSlot(mheap* h, mspan* s, unsigned int idx) noexcept nogil:
    """Record slot idx of small span s as free (its last reference died);
    any thread may call it. False when the slot was freed already (a
    double free), which changes nothing. The slot becomes allocatable at
    the span's next sweep.

    The bit is set before nfreed counts it, so a span is never seen empty
    (allocCount == nfreed) while a free into it is still in flight; and
    nfreed is counted before incache is read, while a cache giving the span
    back clears incache before reading nfreed, so at least one of the two
    sees the other and the span lands on the right list."""
    cdef unsigned long long bit = (<unsigned long long>1) << (idx & 63)
    cdef int sizeclass = s.sizeclass
    # A slot its owner freed already (localFreeBits, the owner's plain
    # bits: a free that happened before this one is visible) must not be
    # counted a second time: a double free would make the span look
    # emptier than it is.
    if s.localFreeBits[idx >> 6] & bit:
        return False
    cdef int32_t n
    if pa_or64(&s.freeBits[idx >> 6], bit) & bit:
        return False
    n = pa_add32(&s.nfreed, 1)
    # Only two frees into an uncached span change which list it belongs on:
    # the first since its sweep (it may sit on full) and the one that
    # leaves nothing live (it goes back to the page heap). The others need
    # no lock. allocCount of an uncached span changes only in a sweep under
    # the class's lock, and a span a sweep is taking is being cached, which
    # needs nothing from us; freedUncached checks again under the lock.
    if not pa_load8(&s.incache) and (n == 1 or n >= <int32_t>s.allocCount):
        freedUncached(h, s, sizeclass)
    return True
