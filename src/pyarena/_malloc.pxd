# Allocation and free entry points (Go: malloc.go). See _malloc.pyx.
from libc.stdint cimport uintptr_t, uint8_t
from libc.string cimport memset
from pyarena._types cimport (mheap, mcache, mspan, TINY_SIZE, TINY_SIZE_CLASS, pa_or64,
                             pa_add64, pa_load8, pa_addu8, LARGE_SPARE_PAGES, MAX_SMALL_SIZE,
                             MAX_ALLOC, PAGE_SIZE, PAGE_SHIFT)
from pyarena._msize cimport alignedClass, sizeToClass16
from pyarena._mspan cimport nextFreeFast, objIndex, isAllocated, isFreed, freeSlotLocal
from pyarena._mcache cimport nextFree, allocLarge, keepLargeSpare, threadSelf
from pyarena._mcentral cimport freeSlot
from pyarena._mheap cimport freeSpan, spanOf
from pyarena._mprof cimport countdown, mallocEventP

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
cdef uintptr_t mallocSmallSlow(mcache* c, int sizeclass, size_t nbytes, bint needzero) noexcept nogil
cdef void freeOther(mheap* h, mspan* s, uintptr_t p, bint tiny) noexcept nogil
cdef void freeRemote(mheap* h, mspan* s, uintptr_t p, unsigned int idx) noexcept nogil
cdef void badFree(mheap* h, uintptr_t p, int why) noexcept nogil
cdef void badRealloc(mheap* h, uintptr_t p, int why) noexcept nogil
cdef uintptr_t debugMalloc(mheap* h, mcache* c, size_t n, size_t align, bint zero,
                           int* cls, uintptr_t* slot) noexcept nogil

# freeObject results
cdef enum:
    FREE_OK = 0
    FREE_NOT_IN_HEAP = -1
    FREE_NOT_OBJECT_START = -2
    FREE_NOT_ALLOCATED = -3


# The hot paths, inline so that every caller (the face, the C-level API,
# NumPy's handler) compiles them in. Each is the common case only; the rest
# is a call to an out-of-line function, so that the common case needs few
# registers (Go's mallocgc fast paths; mimalloc's _mi_page_malloc/mi_free).

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


cdef extern from *:
    """
    /* Zero n bytes of a small slot with 8-byte stores, rounded up to a
       whole word (every slot size is a multiple of 8). The empty asm keeps
       GCC from turning the loop back into a call to memset, which costs
       more than the clear for the sizes it is used for. */
    static inline void pyarena_clear_words(uintptr_t p, size_t n) {
        uint64_t *w = (uint64_t *)p;
        size_t k = (n + 7) >> 3;
        for (; k >= 2; k -= 2, w += 2) {
            w[0] = 0; w[1] = 0;
            __asm__ volatile("" ::: "memory");
        }
        if (k) w[0] = 0;
    }
    """
    void clearWords "pyarena_clear_words"(uintptr_t p, size_t n) noexcept nogil


cdef inline void clearSlot(uintptr_t v, size_t nbytes) noexcept nogil:
    """Zero the first nbytes of a small slot: word stores up to 256 bytes,
    memset beyond."""
    if nbytes <= 256:
        clearWords(v, nbytes)
    else:
        memset(<void*>v, 0, nbytes)


cdef inline uintptr_t mallocSmall(mcache* c, int sizeclass, size_t nbytes, bint needzero) noexcept nogil:
    """A slot of sizeclass from the thread's cache, its first nbytes zeroed
    if needzero; 0 without memory."""
    cdef mspan* s = c.alloc[sizeclass]
    cdef uintptr_t v = nextFreeFast(s)
    if v == 0:
        return mallocSmallSlow(c, sizeclass, nbytes, needzero)
    c.nmalloc[sizeclass] += 1
    c.allocBytes += s.elemsize
    # Slots below zeroLimit may hold old data (slotNeedsZero by address).
    if needzero and v < s.zeroLimit:
        clearSlot(v, nbytes)
    if countdown(c, s.elemsize):
        return mallocEventP(c, v, s.elemsize, s)
    return v


cdef inline void freeObject(mheap* h, uintptr_t p, bint tiny) noexcept nogil:
    """Record that the object at p died (its last reference went away); any
    thread may call this. The common case, a small object freed by the
    thread whose cache is allocating from its span (the span's ownerThread
    is the caller's thread pointer), is done here with plain bit operations;
    large objects, tiny values and frees into other spans go out of line.
    A p that is not the start of a live object of h (for a tiny value: an
    address inside a live tiny block) changes nothing and is reported
    (badFree). Every other path ends in a tail call, so the common one
    saves no registers."""
    cdef mspan* s = spanOf(h, p)
    cdef uintptr_t idx
    cdef int cls
    cdef unsigned long long bit
    cdef unsigned int w
    cdef mcache* c
    if s == NULL:
        badFree(h, p, FREE_NOT_IN_HEAP)
        return
    cls = s.sizeclass
    if cls == 0 or tiny:
        freeOther(h, s, p, tiny)
        return
    idx = objIndex(s, p)
    if p != s.startAddr + idx * s.elemsize:
        badFree(h, p, FREE_NOT_OBJECT_START)
        return
    if not isAllocated(s, idx) or (s.tinyRefs != NULL and pa_load8(&s.tinyRefs[idx]) != 0):
        badFree(h, p, FREE_NOT_ALLOCATED)
        return
    if s.ownerThread != threadSelf():
        freeRemote(h, s, p, <unsigned int>idx)
        return
    c = s.cache
    w = <unsigned int>(idx >> 6)
    bit = (<unsigned long long>1) << (idx & 63)
    if (s.localFreeBits[w] | s.freeBits[w]) & bit:
        badFree(h, p, FREE_NOT_ALLOCATED)      # freed already, not yet swept
        return
    s.localFreeBits[w] |= bit
    s.nfreedLocal += 1
    c.nfree[cls] += 1
    c.freedBytes += s.elemsize


cdef inline bint freeSlotAny(mheap* h, mspan* s, unsigned int idx) noexcept nogil:
    if s.ownerThread == threadSelf():
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

cdef void releaseIdle(mheap* h, mcache* c, bint gil) noexcept nogil
cdef uintptr_t capRetry(mheap* h, mcache* c, size_t size, size_t align, bint zero,
                        int* cls, mspan** large, bint gil) noexcept nogil


cdef inline uintptr_t mallocgcCapped(mheap* h, mcache* c, size_t size, size_t align,
                                     bint zero, int* cls, mspan** large, bint gil) noexcept nogil:
    """mallocgc on the paths that can pass the hard cap (Heap(max_bytes=)):
    every allocation of a release heap from the Python face and the
    C-level API. A failure under a cap gets one retry after idle memory
    is given back (capRetry, out of line); the inline part is one test of
    the result and, on failure only, one of the cap."""
    cdef uintptr_t p = mallocgc(c, size, align, zero, cls, large)
    if p != 0 or h.pacer.maxPages == 0:
        return p
    return capRetry(h, c, size, align, zero, cls, large, gil)
