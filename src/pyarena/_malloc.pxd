# Allocation and free entry points (Go: malloc.go). See _malloc.pyx.
from libc.stdint cimport uintptr_t, uint8_t
from libc.string cimport memset
from pyarena._types cimport (mheap, mcache, mspan, TINY_SIZE, TINY_SIZE_CLASS, pa_or64,
                             pa_add64, pa_load8, pa_addu8)
from pyarena._mspan cimport nextFreeFast, objIndex, isAllocated, isFreed
from pyarena._mcache cimport nextFree
from pyarena._mcentral cimport freeSlot
from pyarena._mheap cimport freeSpan, spanOf

cdef uintptr_t zerobaseAddr() noexcept nogil
cdef uintptr_t mallocTiny(mcache* c, size_t size) noexcept nogil
cdef mspan* mallocLarge(mcache* c, uintptr_t npages) noexcept nogil
cdef int memclrNoHeapPointersChunked(char* p, size_t n) except -1
cdef int clearLarge(mheap* h, mspan* s, size_t nbytes) except -1
cdef void clearLargeNogil(mheap* h, mspan* s, size_t nbytes) noexcept nogil
cdef bint isLive(mheap* h, uintptr_t p) noexcept nogil
cdef mspan* liveObject(mheap* h, uintptr_t p, uintptr_t* start, uintptr_t* size) noexcept nogil

# freeObject results
cdef enum:
    FREE_OK = 0
    FREE_NOT_IN_HEAP = -1
    FREE_NOT_OBJECT_START = -2
    FREE_NOT_ALLOCATED = -3


# The hot paths, inline so that the Python layer's calls compile into it.

cdef inline uintptr_t mallocSmall(mcache* c, int sizeclass, size_t nbytes, bint needzero) noexcept nogil:
    """A slot of sizeclass from the thread's cache, its first nbytes zeroed
    if needzero; 0 without memory."""
    cdef mspan* s = c.alloc[sizeclass]
    cdef uintptr_t v = nextFreeFast(s)
    if v == 0:
        v = nextFree(c, sizeclass)
        if v == 0:
            return 0
        s = c.alloc[sizeclass]
    c.nmalloc[sizeclass] += 1
    c.allocBytes += s.elemsize
    if needzero and (s.needzero or v < s.startAddr + <uintptr_t>s.freshindex * s.elemsize):
        memset(<void*>v, 0, nbytes)
    return v


cdef inline int freeObject(mheap* h, uintptr_t p, bint tiny) noexcept nogil:
    """Record that the object at p died (its last reference went away);
    any thread may call it. Checks that p is the start of a live object of
    h (for a tiny value: an address inside a live tiny block) and returns a
    FREE_* code; on an error nothing changes."""
    cdef mspan* s = spanOf(h, p)
    cdef uintptr_t idx
    cdef uint8_t refs
    if s == NULL:
        return FREE_NOT_IN_HEAP
    if s.sizeclass == 0:
        if p != s.startAddr:
            return FREE_NOT_OBJECT_START
        # freeBits bit 0 marks a large object freed: two racing frees of
        # it cannot both pass.
        if pa_or64(&s.freeBits[0], 1) & 1:
            return FREE_NOT_ALLOCATED
        s.allocCount = 0
        pa_add64(&h.nfree[0], 1)
        pa_add64(&h.freedBytes, s.elemsize)
        freeSpan(h, s)
        return FREE_OK
    idx = objIndex(s, p)
    if tiny:
        if s.tinyRefs == NULL or pa_load8(&s.tinyRefs[idx]) == 0:
            return FREE_NOT_ALLOCATED
        pa_add64(&h.nfree[TINY_SIZE_CLASS], 1)
        if pa_addu8(&s.tinyRefs[idx], -1) == 0:
            pa_add64(&h.freedBytes, TINY_SIZE)
            freeSlot(h, s, <unsigned int>idx)
        return FREE_OK
    if p != s.startAddr + idx * s.elemsize:
        return FREE_NOT_OBJECT_START
    if not isAllocated(s, idx) or (s.tinyRefs != NULL and pa_load8(&s.tinyRefs[idx]) != 0):
        return FREE_NOT_ALLOCATED
    if not freeSlot(h, s, <unsigned int>idx):
        return FREE_NOT_ALLOCATED
    pa_add64(&h.nfree[s.sizeclass], 1)
    pa_add64(&h.freedBytes, s.elemsize)
    return FREE_OK
