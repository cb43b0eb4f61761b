# cython: language_level=3
"""Memory allocator: the overview, and the allocation entry points (Go:
malloc.go).

pyarena is the Go runtime's allocator with Python's reference counts in
place of Go's garbage collector. The main allocator works in runs of 8 KiB
pages. Small sizes (up to 32 KiB) are rounded to one of 67 size classes,
each with its own span of slots; large sizes get a span of whole pages.

The pieces, bottom up (one module each):

    _mem              the OS: reserve, map, give back, huge-page advice.
    _persistentalloc  metadata memory in 256 KiB chunks (and _mfixalloc:
                      fixed-size records with free lists).
    _mheap            the page heap: 64 MiB arenas, spanOf, runs of free
                      pages that coalesce, released pages known to be zero.
    _mspan            a span's slots: allocBits, the allocCache window,
                      nextFreeIndex, sweep.
    _mcentral         per size class, spans no thread allocates from.
    _mcache           per thread and heap, the span each class allocates
                      from now, the tiny block and the large spare; how a
                      thread finds its cache; the registry of live heaps.
    _malloc           this module: mallocgc's small, tiny and large paths,
                      free, the chunked clear, user-arena chunks.

Above them, the faces (see docs/design.md for the map): _capi, the C-level
API and the NEP 49 handler; _face, the allocation methods every allocator
has (Allocator, Block), written once over a raw placement; _heap, the Heap
(an Allocator over its own mheap) and the default heap; _arena, the Arena;
_mcheck, Heap.check().

Allocating a small object goes up the hierarchy only as far as it must:

    1. Round the size up to its class and look in this thread's mcache for
       the cached span of that class: nextFreeFast finds a free slot with one
       count-trailing-zeros on allocCache. No lock, no Python object.
    2. If the span has no free slot, sweep it if slots in it were freed, or
       else swap it for a span from mcentral with free slots.
    3. If mcentral has none, allocate a span of the class's page count from
       the page heap.
    4. If the page heap has no run that long, grow: map more of the current
       arena, or reserve a new one from the OS.

Freeing: when the last Python reference to a Block dies, its slot is marked
in the span's freeBits. That is the stand-in for "not marked" in Go; the
slot is reused only after the span is swept. A span whose last live slot
dies while no cache holds it goes straight back to the page heap; a large
object's pages go back at once.

Zeroing: memory is cleared only when it may hold old data. Pages fresh from
the OS, and pages given back with MADV_DONTNEED, read as zero, and the page
heap tracks them per page (scav bits). A small span made of such pages
hands out zeroed slots until it is first swept, and even then slots above
its high-water mark (freshindex) stay zero. A large object clears only its
dirty pages, in 256 KiB chunks with the GIL released, checking for Ctrl-C
between chunks (Go: memclrNoHeapPointersChunked, preemptible there).

Tiny objects (1..15 bytes, no alignment asked for) share 16-byte blocks, as
in Go; a block lives until every value carved from it has died. Zero-size
allocations all return one address, zerobase.
"""

from libc.stdint cimport uintptr_t, uint64_t, intptr_t
from libc.string cimport memset
cdef extern from "Python.h":
    # Without Cython's exception check, so that the clear can note how far
    # it got before the handler's exception propagates.
    int PyErr_CheckSignals() noexcept
from pyarena._types cimport (memOpen, memMalloclike, mheap, mcache, mspan, TINY_SIZE, TINY_SIZE_CLASS, pa_addu8,
                             pa_add64, pa_or64, pa_load8, pa_load32, pa_store16, PAGE_SHIFT, PAGE_SIZE, CLEAR_CHUNK,
                             CLEAR_GIL_CHUNKS, CHUNK_POOL_MAX, LARGE_SPARE_PAGES, MAX_ALLOC,
                             pa_lock, pa_unlock, pa_load64)
from pyarena._mspan cimport nextFreeFast, objIndex, isAllocated, isFreed, slotNeedsZero, \
    freeSlotLocal
from pyarena._mcache cimport (nextFree, releaseTiny, allocTinyRefs, allocLarge, peekmcache,
                              keepLargeSpare, dropLargeSpare)
from pyarena._mcentral cimport freeSlot, releaseSpares
from pyarena._mprof cimport countAlloc, profilefree, sampleOf
from pyarena._mheap cimport freeSpan, spanOf, nextDirtyRun
from pyarena._mgcpacer cimport paceCheck
from pyarena._mdebug cimport (redzoneSize, armRedzone, redzoneDamage, freedDamage, poisonFreed,
                              dbgRecord, dbgWarn, FRESH_BYTE, DBG_REDZONE, DBG_FREED_WRITTEN,
                              DBG_BAD_FREE, DBG_DOUBLE_FREE)
from pyarena._mzero cimport (zeroKeep, clearMemory, clearDirty, dirtyRegions, pageRegion,
                             zeroFlush)


import warnings

# The base address of all zero-byte allocations (Go: zerobase). Nothing is
# ever stored there: a zero-length buffer cannot be written. Page-aligned so
# that it satisfies any alignment a caller can ask for.
cdef extern from *:
    """
    static char pyarena_zerobase[8] __attribute__((aligned(8192)));
    """
    char zerobase "pyarena_zerobase"[8]


cdef uintptr_t zerobaseAddr() noexcept nogil:
    return <uintptr_t>zerobase


cdef uintptr_t mallocTiny(mcache* c, size_t size) noexcept nogil:
    """size (1..15) zeroed bytes carved from the cache's tiny block (Go: the
    tiny allocator in mallocgc); 0 without memory.

    Each 16-byte block keeps a count of the values carved from it, plus one
    while it is the cache's current block; it is freed when that reaches 0.
    """
    cdef uintptr_t off = c.tinyoffset
    cdef uintptr_t x
    cdef mspan* s
    cdef unsigned int idx
    # Align the offset the way the size's low bits ask (Go's rule).
    if size & 7 == 0:
        off = (off + 7) & ~(<uintptr_t>7)
    elif size & 3 == 0:
        off = (off + 3) & ~(<uintptr_t>3)
    elif size & 1 == 0:
        off = (off + 1) & ~(<uintptr_t>1)
    if off + size <= TINY_SIZE and c.tiny != 0:
        x = c.tiny + off
        c.tinyoffset = off + size
        pa_addu8(&c.tinyspan.tinyRefs[objIndex(c.tinyspan, c.tiny)], 1)
        c.nmalloc[TINY_SIZE_CLASS] += 1
        return x
    # A new block.
    s = c.alloc[TINY_SIZE_CLASS]
    x = nextFreeFast(s)
    if x == 0:
        x = nextFree(c, TINY_SIZE_CLASS)
        if x == 0:
            return 0
        s = c.alloc[TINY_SIZE_CLASS]
    if s.tinyRefs == NULL:
        s.tinyRefs = <unsigned char*>allocTinyRefs(c.heap)
        if s.tinyRefs == NULL:
            # Give the slot back unused.
            freeSlotLocal(s, <unsigned int>objIndex(s, x))
            return 0
    idx = <unsigned int>objIndex(s, x)
    if slotNeedsZero(s, idx):
        memset(<void*>x, 0, TINY_SIZE)
    c.nmalloc[TINY_SIZE_CLASS] += 1
    c.allocBytes += TINY_SIZE
    # Go counts a tiny block when it is made, not its values.
    countAlloc(c, x, TINY_SIZE, s)
    if size < c.tinyoffset or c.tiny == 0:
        # The new block has more room left than the old one: keep it. Its
        # count (1 for the value, 1 for the cache) is published before the
        # value can reach another thread.
        releaseTiny(c)
        pa_addu8(&s.tinyRefs[idx], 2)
        c.tiny = x
        c.tinyoffset = size
        c.tinyspan = s
    else:
        pa_addu8(&s.tinyRefs[idx], 1)
    return x


cdef uintptr_t mallocSmallSlow(mcache* c, int sizeclass, size_t nbytes, bint needzero) noexcept nogil:
    """mallocSmall when allocCache cannot say. A span of one bitmap word
    whose slots this thread freed itself (the make-and-drop loop of a class
    with few slots a span, 512 bytes and up) is swept here in a few
    instructions and used again; otherwise nextFree refills (sweeps in
    place, or swaps the span for one from mcentral)."""
    cdef mspan* s = c.alloc[sizeclass]
    cdef uintptr_t v = 0
    if s.freeindex == s.nelems and s.nelems <= 64 and s.nfreedLocal and \
            <unsigned int>s.nfreedLocal * 8 >= s.nelems and pa_load32(&s.nfreed) == 0 and \
            s.freeBits[0] == 0:
        sweepLocalWord(s)
        pa_add64(&c.heap.nsweeps, 1)
        v = nextFreeFast(s)
    if v == 0:
        v = nextFree(c, sizeclass)
        if v == 0:
            return 0
        s = c.alloc[sizeclass]
    c.nmalloc[sizeclass] += 1
    c.allocBytes += s.elemsize
    countAlloc(c, v, s.elemsize, s)
    if needzero and v < s.zeroLimit:
        clearSlot(v, nbytes)
    return v


cdef inline void sweepLocalWord(mspan* s) noexcept nogil:
    """sweep for a full one-word span whose frees are all its owner's: every
    slot was handed out (freeindex == nelems), so the live slots are those
    not in localFreeBits."""
    cdef uint64_t full = ~(<uint64_t>0) if s.nelems == 64 else \
        (((<uint64_t>1) << s.nelems) - 1)
    s.allocBits[0] = full & ~s.localFreeBits[0]
    s.localFreeBits[0] = 0
    s.allocCount -= s.nfreedLocal
    s.nfreedLocal = 0
    s.freshindex = s.nelems
    if not s.needzero:
        s.zeroLimit = s.startAddr + s.nelems * s.elemsize
    pa_store16(&s.freeindex, 0)         # after allocBits: see isAllocated
    s.allocCache = ~s.allocBits[0]


cdef void freeOther(mheap* h, mspan* s, uintptr_t p, bint tiny) noexcept nogil:
    """freeObject for a large object or a tiny value."""
    cdef uintptr_t idx
    cdef mcache* c = peekmcache(h)
    if s.sizeclass == 0:
        if p != s.startAddr:
            badFree(h, p, FREE_NOT_OBJECT_START)
            return
        if h.debug:
            freeLargeDebug(h, s, p, c)
            return
        # freeBits bit 0 marks a large object freed: two racing frees of
        # it cannot both pass.
        if pa_or64(&s.freeBits[0], 1) & 1:
            badFree(h, p, FREE_NOT_ALLOCATED)
            return
        s.allocCount = 0
        if s.nsampled:
            profilefree(h, s, p)
        countFree(h, c, 0, s.elemsize)
        if h.zero.on and zeroKeep(h, s):
            return              # to be cleared ahead of time (_mzero)
        if c != NULL and s.npages <= LARGE_SPARE_PAGES and not h.closed:
            keepLargeSpare(c, s)
        else:
            freeSpan(h, s)
        return
    idx = objIndex(s, p)
    if s.tinyRefs == NULL or pa_load8(&s.tinyRefs[idx]) == 0:
        badFree(h, p, FREE_NOT_ALLOCATED)
        return
    if pa_addu8(&s.tinyRefs[idx], -1) == 0:
        if s.nsampled:
            profilefree(h, s, s.startAddr + idx * s.elemsize)
            reown(h, s, TINY_SIZE_CLASS)
        countFree(h, c, TINY_SIZE_CLASS, TINY_SIZE)
        freeSlotAny(h, s, <unsigned int>idx)
    else:
        countFree(h, c, TINY_SIZE_CLASS, 0)


cdef inline void reown(mheap* h, mspan* s, int cls) noexcept nogil:
    """A sampled object of s was freed: if that was its span's last and the
    caller's cache is allocating from s, the span's frees by the caller are
    local again (a sample took them out of line: _mprof). Only the owner
    writes ownerThread of a cached span, and another thread compares it
    with its own thread pointer, which neither value is, so the store needs
    no lock; nsampled goes up only in the owner, so a 0 read here stays."""
    cdef mcache* c = peekmcache(h)
    if c != NULL and c.alloc[cls] == s and pa_load32(&s.nsampled) == 0:
        s.ownerThread = c.spanOwner


cdef void freeRemote(mheap* h, mspan* s, uintptr_t p, unsigned int idx) noexcept nogil:
    """freeObject into a span the calling thread's cache is not allocating
    from: atomically (freeSlot), counted in its cache or the heap."""
    cdef int cls = s.sizeclass
    cdef uintptr_t size = s.elemsize
    if h.debug:
        freeSmallDebug(h, s, p, idx)
        return
    if s.nsampled:
        # Before the slot is free: once it is, it may be handed out (and
        # sampled) again.
        profilefree(h, s, p)
        reown(h, s, cls)
    if not freeSlot(h, s, idx):
        badFree(h, p, FREE_NOT_ALLOCATED)
        return
    # s may be gone now (freeSlot gave its pages back): counted from copies.
    countFree(h, peekmcache(h), cls, size)


cdef void badFree(mheap* h, uintptr_t p, int why) noexcept nogil:
    """A free of a pointer h does not hold live: count it and warn
    (RuntimeWarning) rather than corrupt anything (MemStats.invalid_frees).
    Any thread; the GIL is taken for the warning."""
    reportBad(h, p, why, False)


cdef void badRealloc(mheap* h, uintptr_t p, int why) noexcept nogil:
    """badFree for realloc, which refuses the pointer (and returns NULL)."""
    reportBad(h, p, why, True)


cdef void reportBad(mheap* h, uintptr_t p, int why, bint realloc) noexcept nogil:
    cdef mspan* s
    cdef uintptr_t slot = 0, start = 0
    cdef int kind
    pa_add64(&h.invalidFrees, 1)
    if h.debug:
        # Both addresses: the pointer, and the slot it falls in.
        s = spanOf(h, p)
        if s != NULL:
            slot = s.elemsize if s.sizeclass else s.npages << PAGE_SHIFT
            start = s.startAddr + objIndex(s, p) * s.elemsize if s.sizeclass else s.startAddr
        kind = DBG_DOUBLE_FREE if why == FREE_NOT_ALLOCATED else DBG_BAD_FREE
        pa_lock(&h.dbgLock)
        dbgRecord(h, kind, p, slot, -1, start, NULL)
        pa_unlock(&h.dbgLock)
        dbgWarn(h, kind, p, slot, -1, start, NULL)
        return
    with gil:
        what = {FREE_NOT_IN_HEAP: "not in this heap",
                FREE_NOT_OBJECT_START: "not the start of an allocation",
                FREE_NOT_ALLOCATED: "not allocated (freed twice?)"}.get(why, "invalid")
        verb = f"realloc of {p:#x} refused" if realloc else f"free of {p:#x} ignored"
        try:
            warnings.warn(f"pyarena: {verb}: {what}", RuntimeWarning, stacklevel=2)
        except BaseException:
            pass


cdef mspan* liveObject(mheap* h, uintptr_t p, uintptr_t* start, uintptr_t* size) noexcept nogil:
    """The span of the live object (or live tiny block) holding address p,
    with the object's start and slot size; NULL if p is not in one."""
    cdef mspan* s = spanOf(h, p)
    cdef uintptr_t idx
    if s == NULL:
        return NULL
    if s.sizeclass == 0:
        if s.allocCount != 1 or isFreed(s, 0):
            return NULL
        start[0] = s.startAddr
        size[0] = s.elemsize
        return s
    idx = objIndex(s, p)
    if idx >= s.nelems or not isAllocated(s, idx) or isFreed(s, idx):
        return NULL
    start[0] = s.startAddr + idx * s.elemsize
    size[0] = s.elemsize
    return s


# What the last interrupted clear had done (bytes cleared, bytes asked),
# and how many clears were interrupted: a testing hook (_testing), so that a
# test can show the interrupt landed inside the clear, not after it.
cdef size_t _interruptedDone = 0
cdef size_t _interruptedTotal = 0
cdef size_t _interruptions = 0


cdef void clearInterruptions(size_t* done, size_t* total, size_t* count) noexcept:
    done[0] = _interruptedDone
    total[0] = _interruptedTotal
    count[0] = _interruptions


cdef int memclrNoHeapPointersChunked(char* p, size_t n) except -1:
    """Zero n bytes at p with the GIL released, CLEAR_CHUNK bytes at a time,
    taking the GIL back every CLEAR_GIL_CHUNKS chunks to check for signals,
    so that Ctrl-C interrupts a long clear (Go: memclrNoHeapPointersChunked,
    preemptible between chunks). Clears of up to CLEAR_GIL_CHUNKS chunks
    (about 20-60 us) keep the GIL: releasing it would cost more than it
    lets other threads do. Call with the GIL held, on memory no other
    thread can see. The bytes are cleared by _mzero.clearMemory (stores
    only over lines not zero already)."""
    return clearChunked(p, n, 0, n)


cdef int clearChunked(char* p, size_t n, size_t before, size_t whole) except -1:
    """memclrNoHeapPointersChunked as one piece of a larger clear: before
    bytes of the whole were dealt with already, which an interrupt's record
    counts."""
    global _interruptedDone, _interruptedTotal, _interruptions
    cdef size_t chunk, total = n
    cdef int k
    if n <= CLEAR_CHUNK * CLEAR_GIL_CHUNKS:
        clearMemory(<uintptr_t>p, n)
        return 0
    while n:
        with nogil:
            for k in range(CLEAR_GIL_CHUNKS):
                chunk = n if n < CLEAR_CHUNK else CLEAR_CHUNK
                clearMemory(<uintptr_t>p, chunk)
                p += chunk
                n -= chunk
                if n == 0:
                    break
        if n and PyErr_CheckSignals() < 0:
            _interruptedDone = before + total - n
            _interruptedTotal = whole
            _interruptions += 1
            return -1
    return 0


cdef enum:
    REGIONS = 16


cdef int clearRun(mheap* h, uintptr_t a, uintptr_t b, mspan* s, uintptr_t end,
                  bint gil, uintptr_t* cleared) except -1:
    """Clear the page-aligned run [a, b) of large span s (ending at end),
    skipping the pages the page tables show hold nothing (_mzero); in
    interruptible chunks when gil (the GIL held), else at once (callable
    without the GIL: nothing in it raises then). *cleared gets the bytes
    it had to look at."""
    cdef pageRegion regs[REGIONS]
    cdef uintptr_t walk, x, y
    cdef long k, i
    while a < b:
        k = dirtyRegions(a, b, regs, REGIONS, &walk)
        if k < 0:
            k = 1
            regs[0].start = a
            regs[0].end = b
            walk = b
        for i in range(k):
            x = <uintptr_t>regs[i].start
            y = <uintptr_t>regs[i].end
            if x < a:
                x = a
            if y > walk:
                y = walk
            if y <= x:
                continue
            cleared[0] += y - x
            if gil:
                clearChunked(<char*>x, y - x, x - s.startAddr, end - s.startAddr)
            else:
                clearMemory(x, y - x)
        a = walk
    return 0


cdef inline uintptr_t largeClearEnd(mspan* s, size_t nbytes) noexcept nogil:
    return s.startAddr + (((nbytes + PAGE_SIZE - 1) >> PAGE_SHIFT) << PAGE_SHIFT)


cdef int clearLarge(mheap* h, mspan* s, size_t nbytes) except -1:
    """Zero the first nbytes of large span s, skipping pages that still read
    as zero: their scav bits are set, the worker cleared them ahead of time
    (s.zeroed), or the page tables show them empty. Those are never
    touched, so they cost no page fault. GIL held; the clear runs in
    interruptible chunks (memclrNoHeapPointersChunked). Counted in the
    heap's clearedByCaller and clearSkipped."""
    cdef uintptr_t end = largeClearEnd(s, nbytes)
    cdef uintptr_t a = s.startAddr
    cdef uintptr_t b
    cdef uintptr_t cleared = 0
    if s.needzero:
        try:
            if s.freshindex:
                # A large spare or a span from the zeroing queue: its scav
                # bits are stale, every page may be dirty but the prefix the
                # worker cleared.
                a += s.zeroed
                if a < end:
                    clearRun(h, a, end, s, end, True, &cleared)
            else:
                while nextDirtyRun(h, &a, end, &b):
                    clearRun(h, a, b, s, end, True, &cleared)
                    a = b
        finally:
            pa_add64(&h.clearedByCaller, cleared)
    pa_add64(&h.clearSkipped, end - s.startAddr - cleared)
    return 0


cdef void clearLargeNogil(mheap* h, mspan* s, size_t nbytes) noexcept nogil:
    """clearLarge for callers without the GIL (the C API, NumPy's calloc):
    the dirty pages are cleared with no look at signals."""
    cdef uintptr_t end = largeClearEnd(s, nbytes)
    cdef uintptr_t a = s.startAddr
    cdef uintptr_t b
    cdef uintptr_t cleared = 0
    if s.needzero:
        if s.freshindex:
            a += s.zeroed
            if a < end:
                clearRunNogil(h, a, end, s, &cleared)
        else:
            while nextDirtyRun(h, &a, end, &b):
                clearRunNogil(h, a, b, s, &cleared)
                a = b
        pa_add64(&h.clearedByCaller, cleared)
    pa_add64(&h.clearSkipped, end - s.startAddr - cleared)


cdef void clearRunNogil(mheap* h, uintptr_t a, uintptr_t b, mspan* s,
                        uintptr_t* cleared) noexcept nogil:
    cdef uintptr_t n = clearDirty(a, b)
    cleared[0] += n


# ---------------------------------------------------------------------------
# User-arena chunks (Go: arena.go's allocUserArenaChunk and mheap.userArena's
# reuse list). A chunk is one large object of the heap; a chunk whose arena
# and values are all gone waits in the heap's pool of CHUNK_POOL_MAX, with
# how far it may hold old data, so that the next arena needs no page-heap
# trip and clears only what an earlier arena wrote. GIL held throughout.

cdef mspan* allocUserArenaChunk(mheap* h, mcache* c, uintptr_t npages,
                                uintptr_t* dirtyEnd, bint* reused) noexcept nogil:
    """A chunk of npages pages: a pooled one of that size (*reused set),
    else a new large object from the cache c. *dirtyEnd: below it the
    chunk's pages may hold old data; above it the span's scav bits say
    which pages read as zero. NULL without memory."""
    cdef mspan* s
    cdef int i
    for i in range(h.npool - 1, -1, -1):
        if h.chunkPool[i].npages == npages:
            s = h.chunkPool[i]
            dirtyEnd[0] = h.chunkDirty[i]
            h.npool -= 1
            h.chunkPool[i] = h.chunkPool[h.npool]
            h.chunkDirty[i] = h.chunkDirty[h.npool]
            reused[0] = True
            return s
    reused[0] = False
    s = allocLarge(c, npages)
    if s == NULL:
        return NULL
    s.redzones = 0          # a chunk has none, even on a debug heap's old span
    # A large spare's pages are all dirty (freshindex 1); a fresh span's
    # scav bits are exact.
    dirtyEnd[0] = s.startAddr + (npages << PAGE_SHIFT) if s.freshindex else s.startAddr
    return s


cdef void freeUserArenaChunk(mheap* h, mspan* s, uintptr_t dirtyEnd) noexcept nogil:
    """The chunk's last value died: pool it, or free it as the large object
    it is when the pool is full or the heap closed."""
    if h.npool < CHUNK_POOL_MAX and not h.closed:
        h.chunkPool[h.npool] = s
        h.chunkDirty[h.npool] = dirtyEnd
        h.npool += 1
        return
    freeObject(h, s.startAddr, False)


cdef void dropUserArenaChunks(mheap* h) noexcept nogil:
    """Free every pooled chunk (Heap.release, close)."""
    while h.npool:
        h.npool -= 1
        freeObject(h, h.chunkPool[h.npool].startAddr, False)


# ---------------------------------------------------------------------------
# The debug heap (_mdebug): its allocation and its frees. A debug heap's
# every allocation comes here (its caches are never in the fast lookup
# slots) and every free (its spans have no owner thread).

cdef uintptr_t debugMalloc(mheap* h, mcache* c, size_t n, size_t align, bint zero,
                           int* cls, uintptr_t* slot) noexcept nogil:
    """mallocgc for a debug heap: n > 0 bytes in a slot with a redzone after
    them (*slot: the slot's size), zeroed or filled with FRESH_BYTE; a
    reused small slot must still hold the freed pattern. The object is
    ready: no clear is left to the caller (a large one is cleared here,
    without looking at signals). 0 without memory."""
    cdef size_t rz = redzoneSize(n)
    cdef mspan* large = NULL
    cdef mspan* s
    cdef uintptr_t p
    cdef intptr_t off = -1
    if n > MAX_ALLOC - rz:
        return 0
    pa_lock(&h.dbgLock)
    p = mallocgc(c, n + rz, align, False, cls, &large)
    if p == 0:
        pa_unlock(&h.dbgLock)
        return 0
    if large != NULL:
        s = large
        slot[0] = s.npages << PAGE_SHIFT
        # The clear works in whole pages: before the redzone is armed. A
        # spare may still be closed to the sanitizers from its last free.
        memOpen(p, slot[0])
        if zero:
            clearLargeNogil(h, s, n)
        else:
            memset(<void*>p, FRESH_BYTE, n)
    else:
        s = spanOf(h, p)
        slot[0] = s.elemsize
        # Below freshindex a free slot held an object: it was freed here,
        # so it must hold the freed pattern still.
        if s.redzones and objIndex(s, p) < s.freshindex:
            off = freedDamage(p, slot[0])
            if off >= 0:
                dbgRecord(h, DBG_FREED_WRITTEN, p, slot[0], off, 0, NULL)
        memOpen(p, slot[0])
        memset(<void*>p, 0 if zero else FRESH_BYTE, n)
    s.redzones = 1
    armRedzone(p, n, slot[0])           # and closes the redzone
    memMalloclike(p, n, zero)
    pa_unlock(&h.dbgLock)
    if c.gcCredit < 0:
        paceCheck(c)        # chargeCredit leaves it to us: see _mgcpacer.pxd
    if off >= 0:
        dbgWarn(h, DBG_FREED_WRITTEN, p, slot[0], off, 0, NULL)
    return p


cdef intptr_t retireSlot(mheap* h, uintptr_t p, uintptr_t slot, size_t* n,
                         void** bucket) noexcept nogil:
    """A debug free's look at the object at p in its slot (debug lock held):
    a damaged redzone recorded with the allocation's sample (*n its size,
    *bucket the sample), then the freed pattern over the slot. The offset
    of the first damaged byte, or -1; the caller warns after the lock."""
    cdef intptr_t off = redzoneDamage(p, slot, n)
    if off >= 0:
        bucket[0] = sampleOf(h, p)
        dbgRecord(h, DBG_REDZONE, p, n[0], off, 0, bucket[0])
    poisonFreed(p, slot)
    return off


cdef void freeSmallDebug(mheap* h, mspan* s, uintptr_t p, unsigned int idx) noexcept nogil:
    """freeRemote for a debug heap: the redzone checked, the slot filled
    with the freed pattern, then freed, all under the debug lock."""
    cdef int cls = s.sizeclass
    cdef uintptr_t size = s.elemsize
    cdef size_t n = 0
    cdef intptr_t off = -1
    cdef void* bucket = NULL
    cdef bint ok
    pa_lock(&h.dbgLock)
    if isFreed(s, idx):
        pa_unlock(&h.dbgLock)
        badFree(h, p, FREE_NOT_ALLOCATED)
        return
    if s.redzones:
        off = retireSlot(h, p, size, &n, &bucket)
    if s.nsampled:
        profilefree(h, s, p)
    ok = freeSlot(h, s, idx)
    pa_unlock(&h.dbgLock)
    if not ok:
        badFree(h, p, FREE_NOT_ALLOCATED)
        return
    countFree(h, peekmcache(h), cls, size)
    if off >= 0:
        dbgWarn(h, DBG_REDZONE, p, n, off, 0, bucket)


cdef void freeLargeDebug(mheap* h, mspan* s, uintptr_t p, mcache* c) noexcept nogil:
    """freeOther's large case for a debug heap (see freeSmallDebug)."""
    cdef uintptr_t slot = s.npages << PAGE_SHIFT
    cdef size_t n = 0
    cdef intptr_t off = -1
    cdef void* bucket = NULL
    pa_lock(&h.dbgLock)
    if pa_or64(&s.freeBits[0], 1) & 1:
        pa_unlock(&h.dbgLock)
        badFree(h, p, FREE_NOT_ALLOCATED)
        return
    if s.redzones:
        off = retireSlot(h, p, slot, &n, &bucket)
    s.allocCount = 0
    if s.nsampled:
        profilefree(h, s, p)
    countFree(h, c, 0, s.elemsize)
    if c != NULL and s.npages <= LARGE_SPARE_PAGES and not h.closed:
        keepLargeSpare(c, s)
    else:
        freeSpan(h, s)
    pa_unlock(&h.dbgLock)
    if off >= 0:
        dbgWarn(h, DBG_REDZONE, p, n, off, 0, bucket)


# ---------------------------------------------------------------------------
# The hard cap's second chance (Heap(max_bytes=), _mgcpacer).

cdef void releaseIdle(mheap* h, mcache* c, bint gil) noexcept nogil:
    """Give the page heap back the idle memory it cannot release under its
    lock: the pooled arena chunks (only with the GIL, which guards the
    pool), the large objects queued for clearing, the classes' spare spans
    and c's large spare (Heap.release, the hard cap's retry)."""
    if gil:
        dropUserArenaChunks(h)
    zeroFlush(h)
    releaseSpares(h)
    if c != NULL:
        dropLargeSpare(c)


cdef uintptr_t capRetry(mheap* h, mcache* c, size_t size, size_t align, bint zero,
                        int* cls, mspan** large, bint gil) noexcept nogil:
    """mallocgcCapped's second chance, out of line: the hard cap refused
    the allocation; give back the idle memory the page heap cannot release
    under its lock (large objects queued for clearing, the classes'
    spares, this thread's large spare, and with the GIL held (gil) the
    pooled arena chunks, which the GIL guards), as Heap.release() does,
    and try once more (after any failure under a cap: idle memory given
    back helps an out-of-memory failure too). A retry the cap refuses
    again is not counted twice in capRefused."""
    cdef uint64_t refused
    cdef uintptr_t p
    releaseIdle(h, c, gil)
    refused = pa_load64(&h.pacer.capRefused)
    p = mallocgc(c, size, align, zero, cls, large)
    if p == 0 and pa_load64(&h.pacer.capRefused) != refused:
        pa_lock(&h.lock)
        h.pacer.capRefused -= 1
        pa_unlock(&h.lock)
    return p
