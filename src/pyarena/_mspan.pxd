# Spans and their allocation bitmaps (Go: mspan in mheap.go, allocBits and
# allocCache in mbitmap.go). See _mspan.pyx for the slow paths and sweep.
#
# Invariants of an in-use small span s (checked by _testing.check_span):
#   - slot i is allocated iff i < s.freeindex or allocBits bit i is set;
#   - allocCount = number of allocated slots (freed-but-unswept included);
#   - nfreed = popcount(freeBits) once frees in flight land; every freeBits
#     bit is an allocated slot;
#   - allocCache bit k (k < 64 - freeindex % 64) is the complement of
#     allocBits bit freeindex + k, so a 1 bit is a free slot;
#   - slots at and above freshindex never held data since the span was set
#     up; unless needzero, they read as zero.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from pyarena._types cimport mspan, mSpanList, pa_load64, pa_load16

cdef extern from *:
    """
    static inline unsigned int pyarena_ctz64(unsigned long long x) {
        return x ? (unsigned int)__builtin_ctzll(x) : 64u;
    }
    static inline unsigned int pyarena_popcount64(unsigned long long x) {
        return (unsigned int)__builtin_popcountll(x);
    }
    """
    unsigned int ctz64 "pyarena_ctz64"(unsigned long long x) noexcept nogil
    unsigned int popcount64 "pyarena_popcount64"(unsigned long long x) noexcept nogil


cdef void initSpan(mspan* s, int sizeclass, bint needzero) noexcept nogil
cdef void sweep(mspan* s) noexcept nogil
cdef uint16_t nextFreeIndex(mspan* s) noexcept nogil


cdef inline void refillAllocCache(mspan* s, uint16_t whichWord) noexcept nogil:
    """Load the complement of allocBits word whichWord (Go refills from a
    byte index; our bitmaps are 64-bit words)."""
    s.allocCache = ~s.allocBits[whichWord]


cdef inline uintptr_t nextFreeFast(mspan* s) noexcept nogil:
    """The next free slot's address from allocCache, or 0 when the cache
    cannot say without a refill (Go: nextFreeFast in malloc.go)."""
    cdef unsigned int theBit = ctz64(s.allocCache)
    cdef unsigned int result, freeidx
    if theBit < 64:
        result = s.freeindex + theBit
        if result < s.nelems:
            freeidx = result + 1
            if freeidx % 64 == 0 and freeidx != s.nelems:
                return 0
            s.allocCache >>= theBit + 1
            s.freeindex = <uint16_t>freeidx
            s.allocCount += 1
            return s.startAddr + <uintptr_t>result * s.elemsize
    return 0


cdef inline uintptr_t objIndex(mspan* s, uintptr_t p) noexcept nogil:
    """Slot index of address p in s, by the divide magic: no division."""
    return ((p - s.startAddr) * <uint64_t>s.divMul) >> 32


cdef inline bint isAllocated(mspan* s, uintptr_t i) noexcept nogil:
    """Whether slot i is allocated; any thread. freeindex is read first
    (acquire): a sweep writes the new allocBits before it resets freeindex
    (release), so a reader that sees the reset sees the new bits, and one
    that sees the old freeindex needs the bits only for slots allocated
    before the last sweep, which both versions of the bits hold."""
    if i < pa_load16(&s.freeindex):
        return True
    return (pa_load64(&s.allocBits[i >> 6]) >> (i & 63)) & 1


cdef inline bint isFreed(mspan* s, uintptr_t i) noexcept nogil:
    """Freed and not yet swept (by any thread; the owner's own bits are
    exact only for the owner)."""
    return ((pa_load64(&s.freeBits[i >> 6]) | s.localFreeBits[i >> 6]) >> (i & 63)) & 1


cdef inline bint slotNeedsZero(mspan* s, uintptr_t i) noexcept nogil:
    return s.needzero or i < s.freshindex


cdef inline bint freeSlotLocal(mspan* s, unsigned int idx) noexcept nogil:
    """Record slot idx of s free, for the thread whose cache holds s (see
    _mcentral.freeSlot for any other thread): plain bit operations, no
    atomics, no lists.
    False for a double free."""
    cdef unsigned long long bit = (<unsigned long long>1) << (idx & 63)
    if (s.localFreeBits[idx >> 6] | pa_load64(&s.freeBits[idx >> 6])) & bit:
        return False
    s.localFreeBits[idx >> 6] |= bit
    s.nfreedLocal += 1
    return True


# Doubly linked span lists (Go: mSpanList). A span is on at most one list;
# s.list says which, so removal needs no search.

cdef inline void spanListPush(mSpanList* l, mspan* s, uint8_t which) noexcept nogil:
    s.prev = NULL
    s.next = l.first
    if l.first != NULL:
        l.first.prev = s
    else:
        l.last = s
    l.first = s
    s.list = which


cdef inline void spanListAppend(mSpanList* l, mspan* s, uint8_t which) noexcept nogil:
    s.next = NULL
    s.prev = l.last
    if l.last != NULL:
        l.last.next = s
    else:
        l.first = s
    l.last = s
    s.list = which


cdef inline void spanListRemove(mSpanList* l, mspan* s) noexcept nogil:
    if s.prev != NULL:
        s.prev.next = s.next
    else:
        l.first = s.next
    if s.next != NULL:
        s.next.prev = s.prev
    else:
        l.last = s.prev
    s.next = NULL
    s.prev = NULL
    s.list = 0
