# Allocation and free entry points (Go: malloc.go). See _malloc.pyx.
from libc.stdint cimport uintptr_t, uint8_t
from libc.string cimport memset
from pyarena._types cimport (mheap, mcache, mspan, TINY_SIZE, TINY_SIZE_CLASS, pa_or64,
                             pa_add64, pa_load8, pa_addu8, LARGE_SPARE_PAGES, MAX_SMALL_SIZE,
                             MAX_ALLOC, PAGE_SIZE, PAGE_SHIFT)
from pyarena._msize cimport alignedClass, sizeToClass16
from pyarena._mspan cimport nextFreeFast, objIndex, isAllocated, isFreed, freeSlotLocal
from pyarena._mcache cimport nextFree, allocLarge, keepLargeSpare
from pyarena._mcentral cimport freeSlot
from pyarena._mheap cimport freeSpan, spanOf

cdef uintptr_t zerobaseAddr() noexcept nogil
cdef uintptr_t mallocTiny(mcache* c, size_t size) noexcept nogil
cdef int memclrNoHeapPointersChunked(char* p, size_t n) except -1
cdef void clearInterruptions(size_t* done, size_t* total, size_t* count) noexcept
cdef int clearLarge(mheap* h, mspan* s, size_t nbytes) except -1
cdef void clearLargeNogil(mheap* h, mspan* s, size_t nbytes) noexcept nogil
cdef mspan* liveObject(mheap* h, uintptr_t p, uintptr_t* start, uintptr_t* size) noexcept nogil
cdef mspan* allocUserArenaChunk(mheap* h, mcache* c, uintptr_t npages,
                                uintptr_t* dirtyEnd, bint* reused) noexcept nogil
cdef void freeUserArenaChunk(mheap* h, mspan* s, uintptr_t dirtyEnd) noexcept nogil
cdef void dropUserArenaChunks(mheap* h) noexcept nogil

# freeObject results
cdef enum:
    FREE_OK = 0
    FREE_NOT_IN_HEAP = -1
    FREE_NOT_OBJECT_START = -2
    FREE_NOT_ALLOCATED = -3


# The hot paths, inline so that the Python layer's calls compile into it.

cdef inline uintptr_t mallocgc(mcache* c, size_t size, size_t align, bint needzero,
                               int* cls, mspan** large) noexcept nogil:
    """size >= 1 bytes from the thread's cache c (Go: mallocgc): the tiny
    allocator for 1..15 bytes when no alignment is asked for, a size-class
    slot up to MAX_SMALL_SIZE (the smallest class aligned to align, and to
    16 from 16 bytes on), else a large span of its own. cls receives the
    class (0: large). A large object is not cleared here: *large is its
    span, and the caller clears it as its context allows (clearLarge with
    the GIL, clearLargeNogil without). 0 when memory cannot be had."""
    cdef mspan* s
    large[0] = NULL
    if size <= MAX_SMALL_SIZE:
        if size < TINY_SIZE and align == 0:
            cls[0] = TINY_SIZE_CLASS
            return mallocTiny(c, size)
        cls[0] = sizeToClass16(size) if align == 16 else alignedClass(size, align)
        if cls[0] != 0:
            return mallocSmall(c, cls[0], size, needzero)
    cls[0] = 0
    if size > MAX_ALLOC:
        return 0
    s = allocLarge(c, (size + PAGE_SIZE - 1) >> PAGE_SHIFT)
    if s == NULL:
        return 0
    large[0] = s if needzero else NULL
    return s.startAddr


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
    # slotNeedsZero by address: no index needed.
    if needzero and (s.needzero or v < s.startAddr + <uintptr_t>s.freshindex * s.elemsize):
        memset(<void*>v, 0, nbytes)
    return v


cdef inline int freeObject(mheap* h, mcache* c, uintptr_t p, bint tiny) noexcept nogil:
    """Record that the object at p died (its last reference went away).
    c is the calling thread's cache of h, or NULL if it has none; any
    thread may call this. A slot of a span c is allocating from is freed
    locally, without atomics; others remotely (freeSlot). Checks that p is
    the start of a live object of h (for a tiny value: an address inside a
    live tiny block) and returns a FREE_* code; on an error nothing
    changes."""
    cdef mspan* s = spanOf(h, p)
    cdef uintptr_t idx
    cdef int cls
    if s == NULL:
        return FREE_NOT_IN_HEAP
    cls = s.sizeclass
    if cls == 0:
        if p != s.startAddr:
            return FREE_NOT_OBJECT_START
        # freeBits bit 0 marks a large object freed: two racing frees of
        # it cannot both pass.
        if pa_or64(&s.freeBits[0], 1) & 1:
            return FREE_NOT_ALLOCATED
        s.allocCount = 0
        countFree(h, c, 0, s.elemsize)
        if c != NULL and s.npages <= LARGE_SPARE_PAGES and not h.closed:
            keepLargeSpare(c, s)
        else:
            freeSpan(h, s)
        return FREE_OK
    idx = objIndex(s, p)
    if tiny:
        if s.tinyRefs == NULL or pa_load8(&s.tinyRefs[idx]) == 0:
            return FREE_NOT_ALLOCATED
        if pa_addu8(&s.tinyRefs[idx], -1) == 0:
            countFree(h, c, TINY_SIZE_CLASS, TINY_SIZE)
            freeSlotAny(h, c, s, <unsigned int>idx)
        else:
            countFree(h, c, TINY_SIZE_CLASS, 0)
        return FREE_OK
    if p != s.startAddr + idx * s.elemsize:
        return FREE_NOT_OBJECT_START
    if not isAllocated(s, idx) or (s.tinyRefs != NULL and pa_load8(&s.tinyRefs[idx]) != 0):
        return FREE_NOT_ALLOCATED
    if not freeSlotAny(h, c, s, <unsigned int>idx):
        return FREE_NOT_ALLOCATED
    countFree(h, c, cls, s.elemsize)
    return FREE_OK


cdef inline bint freeSlotAny(mheap* h, mcache* c, mspan* s, unsigned int idx) noexcept nogil:
    if c != NULL and c.alloc[s.sizeclass] == s:
        return freeSlotLocal(s, idx)
    return freeSlot(h, s, idx)


cdef inline void countFree(mheap* h, mcache* c, int cls, uintptr_t nbytes) noexcept nogil:
    """One object of cls freed, nbytes of slot memory given back: in the
    freeing thread's cache, or atomically in the heap when it has none."""
    if c != NULL:
        c.nfree[cls] += 1
        c.freedBytes += nbytes
    else:
        pa_add64(&h.nfree[cls], 1)
        if nbytes:
            pa_add64(&h.freedBytes, nbytes)
