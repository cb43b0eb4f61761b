# cython: language_level=3
"""Spans: runs of pages cut into equal slots, and the bitmaps that say which
slots are free (Go: mspan in mheap.go; allocBits, allocCache, nextFreeIndex
and refillAllocCache in mbitmap.go; sweep in mgcsweep.go).

A small span holds nelems slots of one size class. Allocation scans
allocCache, a 64-bit window onto the complement of allocBits starting at
freeindex: the lowest 1 bit is the next free slot, found with one
count-trailing-zeros (nextFreeFast, inline in _mspan.pxd). When the window
runs out, nextFreeIndex moves it to the next 64 slots.

Go learns which slots died by marking; pyarena learns it from Python's
reference counts, one slot at a time, and records the slot in freeBits. The
slot is not reusable until the span is swept: sweep folds freeBits into
allocBits, resets freeindex to 0, and from then on treats the slots below
the old freeindex as possibly dirty (they will be cleared when handed out
again). Sweeping happens when the owning mcache runs out of slots in the
span or when mcentral hands the span to a cache, never while a cache is in
the middle of using it.
"""

from libc.stdint cimport uint16_t, uint64_t, uintptr_t
from libc.string cimport memset
from libc.stdint cimport int32_t
from pyarena._types cimport (mspan, pyarena_class_to_size, pyarena_class_to_nelems,
                             pyarena_class_to_divmagic, BITMAP_WORDS, PAGE_SIZE,
                             pa_xchg64, pa_load32, pa_add32, pa_store16, pa_load64)
from pyarena._mspan cimport ctz64, popcount64, refillAllocCache


cdef void initSpan(mspan* s, int sizeclass, bint needzero) noexcept nogil:
    """Set up an in-use span for sizeclass (0: one large object) over its
    pages (startAddr and npages already set). All slots free."""
    s.sizeclass = <unsigned char>sizeclass
    s.needzero = needzero
    s.freeindex = 0
    s.allocCount = 0
    s.nfreed = 0
    s.freshindex = 0
    s.zeroed = 0
    s.incache = 0
    memset(s.allocBits, 0, sizeof(s.allocBits))
    memset(s.freeBits, 0, sizeof(s.freeBits))
    memset(s.localFreeBits, 0, sizeof(s.localFreeBits))
    s.nfreedLocal = 0
    s.redzones = 0
    if sizeclass == 0:
        s.elemsize = s.npages * PAGE_SIZE
        s.nelems = 1
        s.divMul = 0
    else:
        s.elemsize = pyarena_class_to_size[sizeclass]
        s.nelems = pyarena_class_to_nelems[sizeclass]
        s.divMul = pyarena_class_to_divmagic[sizeclass]
    refillAllocCache(s, 0)
    s.zeroLimit = s.startAddr + s.nelems * s.elemsize if needzero else s.startAddr


cdef uint16_t nextFreeIndex(mspan* s) noexcept nogil:
    """Index of the next free slot at or after freeindex, advancing
    freeindex past it and keeping allocCache in step; nelems when the span
    is full (Go: mspan.nextFreeIndex)."""
    cdef unsigned int sfreeindex = s.freeindex
    cdef unsigned int snelems = s.nelems
    cdef unsigned int bitIndex, result
    if sfreeindex == snelems:
        return <uint16_t>sfreeindex
    bitIndex = ctz64(s.allocCache)
    while bitIndex == 64:
        # The window holds no free slot: move to the next 64-slot word.
        sfreeindex = (sfreeindex + 64) & ~63u
        if sfreeindex >= snelems:
            s.freeindex = <uint16_t>snelems
            return <uint16_t>snelems
        refillAllocCache(s, <uint16_t>(sfreeindex >> 6))
        bitIndex = ctz64(s.allocCache)
    result = sfreeindex + bitIndex
    if result >= snelems:
        s.freeindex = <uint16_t>snelems
        return <uint16_t>snelems
    s.allocCache >>= bitIndex + 1
    sfreeindex = result + 1
    if sfreeindex % 64 == 0 and sfreeindex != snelems:
        refillAllocCache(s, <uint16_t>(sfreeindex >> 6))
    s.freeindex = <uint16_t>sfreeindex
    return <uint16_t>result


cdef void sweep(mspan* s) noexcept nogil:
    """Make the slots freed since the last sweep allocatable again (Go:
    mspan.sweep with allocBits := gcmarkBits). Called by the cache that
    owns s, or under its mcentral's lock when no cache does. Other threads
    may be freeing slots of s meanwhile: each freeBits word is taken with
    an atomic exchange, so a free lands either in this sweep or the next.
    The owner's own frees (localFreeBits) need no atomics."""
    cdef unsigned int nw = (s.nelems + 63) >> 6
    cdef unsigned int fi = s.freeindex
    cdef unsigned int w, lo
    cdef uint64_t live, freed, local
    cdef int32_t count = 0
    if pa_load32(&s.nfreed) == 0 and s.nfreedLocal == 0:
        return
    for w in range(nw):
        # A plain look first: most words have no pending frees, and an
        # atomic exchange costs a locked instruction.
        freed = pa_load64(&s.freeBits[w])
        if freed:
            freed = pa_xchg64(&s.freeBits[w], 0)
            count += popcount64(freed)
        local = s.localFreeBits[w]
        s.localFreeBits[w] = 0
        live = s.allocBits[w]
        lo = w << 6
        # Slots below freeindex were handed out whatever allocBits says.
        if fi >= lo + 64:
            live = ~(<uint64_t>0)
        elif fi > lo:
            live |= ((<uint64_t>1) << (fi - lo)) - 1
        s.allocBits[w] = live & ~(freed | local)
    if fi > s.freshindex:
        s.freshindex = <uint16_t>fi
        if not s.needzero:
            s.zeroLimit = s.startAddr + fi * s.elemsize
    s.allocCount -= <uint16_t>count + s.nfreedLocal
    s.nfreedLocal = 0
    pa_add32(&s.nfreed, -count)
    pa_store16(&s.freeindex, 0)      # after allocBits: see isAllocated
    refillAllocCache(s, 0)
