# Central span lists, one per size class (Go: mcentral.go). See _mcentral.pyx.
from pyarena._types cimport mheap, mspan

cdef mspan* cacheSpan(mheap* h, int sizeclass) noexcept nogil
cdef void uncacheSpan(mheap* h, mspan* s) noexcept nogil
cdef void freedUncached(mheap* h, mspan* s) noexcept nogil


cdef inline void freeSlot(mheap* h, mspan* s, unsigned int idx) noexcept nogil:
    """Record slot idx of small span s as free: its last Python reference
    died. The caller has checked that the slot is allocated and not yet
    freed. The slot becomes allocatable at the span's next sweep."""
    s.freeBits[idx >> 6] |= (<unsigned long long>1) << (idx & 63)
    s.nfreed += 1
    if not s.incache:
        freedUncached(h, s)
