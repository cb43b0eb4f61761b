# cython: language_level=3
"""The page heap: address space in 64 MiB arenas, handed out as spans of
8 KiB pages (Go: mheap.go, and heapArena, sysAlloc and the arena index in
malloc.go). See _malloc.pyx for the overview.

Address space. The heap reserves 64 MiB-aligned arenas (sysReserveAligned),
PROT_NONE, and maps the newest reservation in 4 MiB steps as it grows (Go's
curArena). Each arena has a heapArena record: spans[], one entry per page,
and scav[], one bit per page. A two-level index in the mheap (10 + 12 bits of
the address above the arena offset) finds the arena of any address, so
spanOf costs two loads and a bounds check. A request larger than an arena
reserves several contiguous arenas.

Free pages. Runs of free pages are mspan records in state mSpanFree, kept
in exact-size lists for runs under 128 pages and in one list above (first
fit, then best fit). A free run records itself in spans[] at its first and
last page, so freeSpan finds its neighbours in O(1) and coalesces with them
(the pre-1.14 Go page heap; Go now uses a radix tree of bitmaps, which pays
off at much larger heaps than a Python process holds).

Zeroed pages. scav bit set = the free page reads as zero: it was never
touched since mapping (fresh pages count as released, as in Go's
pageAlloc.grow) or it was given back with MADV_DONTNEED (sysUnused). This is
what lets allocation skip clearing: a span made only of such pages needs no
zeroing, and a large object clears only its dirty pages. heap_released
counts these pages.

Everything here runs under mheap.lock (allocSpan, freeSpan and
scavengeAll take it); spanOf and arenaOf read without it: an arena is
published (release store) before any address in it is handed out, and a
span's spans[] entries are written before its memory is.

Invariants (checked by Heap.check(), _mcheck.pyx): free runs never touch each
other (they would have been coalesced); pagesInUse is the sum of in-use
spans' pages; pagesMapped = pagesInUse + free pages; pagesReleased is the
number of free pages with their scav bit set.
"""

from libc.stdint cimport uint64_t, uintptr_t, uint32_t
from pyarena._types cimport (
    mheap, mspan, mcache, heapArena, mcentral, mSpanList, arenaReservation,
    mSpanDead, mSpanInUse, mSpanFree, inNoList, inFreePages,
    PAGE_SHIFT, PAGE_SIZE, LOG_HEAP_ARENA_BYTES, ARENA_INDEX_BITS,
    ADDR_BITS, PAGES_PER_ARENA, HEAP_GROW_PAGES, MAX_FREE_LIST_PAGES,
    NUM_SIZE_CLASSES, TINY_SIZE_CLASS, pa_mutex, pa_mutex_init, pa_lock, pa_unlock,
    pa_storeptr, memOpen)
from pyarena._mem cimport (sysAllocOS, sysFree, sysReserveAligned, sysMap, sysHugePage,
                           sysUnused, physPageSize, physHugePageSize)
from pyarena._persistentalloc cimport persistentalloc, persistentfreeall, persistentHugePages
from pyarena._mfixalloc cimport fixinit, fixalloc_alloc, fixalloc_free
from pyarena._mspan cimport initSpan, spanListPush, spanListRemove, ctz64, popcount64
from pyarena._mheap cimport arenaOf, nextDirtyRun

cdef enum:
    HEAP_ARENA_BYTES = 1 << LOG_HEAP_ARENA_BYTES
    RELEASE_ON_FREE_PAGES = (1 << 30) >> PAGE_SHIFT
    # Go: enableMetadataHugePages once the heap passes 1 GiB.
    META_HUGE_SHIFT = 30

# releaseRun's limit meaning "every dirty page of the run".
cdef uintptr_t ALL_PAGES = <uintptr_t>-1
cdef uint64_t META_HUGE_BYTES = <uint64_t>1 << META_HUGE_SHIFT

cdef mheap* mheap_new() noexcept nogil:
    """A new, empty heap (Go: mheap.init), or NULL without memory. The
    caller registers it (_mcache.registerHeap) before any thread can make a
    cache of it."""
    cdef mheap* h = <mheap*>sysAllocOS(sizeof(mheap))
    cdef int i
    if h == NULL:
        return NULL
    h.arenaIndex = <heapArena**>sysAllocOS(sizeof(heapArena*) << ARENA_INDEX_BITS)
    if h.arenaIndex == NULL:
        sysFree(h, sizeof(mheap))
        return NULL
    h.refs = 1
    h.pacer.gogc = -1                   # no pacer until Heap(gogc=...) asks
    h.pacer.limitBytes = -1
    h.pacer.maxBytes = -1
    pa_mutex_init(&h.lock)
    pa_mutex_init(&h.dbgLock)
    fixinit(&h.spanalloc, sizeof(mspan), &h.persistent)
    fixinit(&h.cachealloc, sizeof(mcache), &h.persistent)
    fixinit(&h.tinyrefalloc, 512, &h.persistent)
    for i in range(NUM_SIZE_CLASSES):
        h.central[i].sizeclass = <unsigned char>i
        pa_mutex_init(&h.central[i].lock)
    return h


cdef void mheap_destroy(mheap* h) noexcept nogil:
    """Unmap everything the heap has: arenas, metadata and the record itself.
    Nothing of it may be used afterwards; the caller has taken it out of the
    registry first (_mcache.releaseHeap), so no ending thread will look at
    its caches, which die with it."""
    cdef arenaReservation* r
    cdef arenaReservation* nxt
    r = h.reservations
    while r != NULL:
        nxt = r.next
        if h.debug:
            # ASAN's shadow outlives the mapping: a debug heap's closed
            # slots must not stay poisoned for whoever maps the range next.
            # (Only a debug heap closes memory: pyarena_sanitize.h.)
            memOpen(r.base, r.size)
        sysFree(<void*>r.base, r.size)
        r = nxt
    persistentfreeall(&h.persistent)
    sysFree(h.arenaIndex, sizeof(heapArena*) << ARENA_INDEX_BITS)
    sysFree(h, sizeof(mheap))


# ---------------------------------------------------------------------------
# Per-page metadata across arenas

cdef inline uintptr_t pageIndex(heapArena* ha, uintptr_t addr) noexcept nogil:
    return (addr - ha.base) >> PAGE_SHIFT


cdef void setSpans(mheap* h, uintptr_t base, uintptr_t npages, mspan* s) noexcept nogil:
    """Record s as the owner of every page in [base, base + npages pages)."""
    cdef uintptr_t addr = base
    cdef uintptr_t end = base + (npages << PAGE_SHIFT)
    cdef heapArena* ha
    cdef uintptr_t i, stop
    while addr < end:
        ha = arenaOf(h, addr)
        i = pageIndex(ha, addr)
        stop = PAGES_PER_ARENA
        if end - ha.base < (stop << PAGE_SHIFT):
            stop = (end - ha.base) >> PAGE_SHIFT
        while i < stop:
            ha.spans[i] = s
            i += 1
        addr = ha.base + (stop << PAGE_SHIFT)


cdef inline void clearSpanEntry(mheap* h, uintptr_t page) noexcept nogil:
    cdef heapArena* ha = arenaOf(h, page)
    ha.spans[pageIndex(ha, page)] = NULL


cdef inline void setSpanEnds(mheap* h, mspan* s) noexcept nogil:
    cdef heapArena* ha = arenaOf(h, s.startAddr)
    ha.spans[pageIndex(ha, s.startAddr)] = s
    cdef uintptr_t last = s.startAddr + ((s.npages - 1) << PAGE_SHIFT)
    ha = arenaOf(h, last)
    ha.spans[pageIndex(ha, last)] = s


cdef inline bint scavBit(heapArena* ha, uintptr_t i) noexcept nogil:
    return (ha.scav[i >> 6] >> (i & 63)) & 1


# The scav bitmap is walked a 64-bit word at a time: a 4 MiB object is 512
# pages, 8 words. Each helper splits its page range at arena boundaries.

cdef inline uintptr_t arenaStop(heapArena* ha, uintptr_t end) noexcept nogil:
    """Page index, in ha, where a range ending at end stops."""
    if end - ha.base >= (<uintptr_t>PAGES_PER_ARENA << PAGE_SHIFT):
        return PAGES_PER_ARENA
    return (end - ha.base) >> PAGE_SHIFT


cdef inline uint64_t wordMask(uintptr_t i, uintptr_t stop) noexcept nogil:
    """Bits of word i >> 6 for pages i .. min(stop, next word) - 1."""
    cdef uint64_t m = ~(<uint64_t>0) << (i & 63)
    if stop - (i & ~(<uintptr_t>63)) < 64:
        m &= ((<uint64_t>1) << (stop & 63)) - 1
    return m


cdef enum:
    SCAV_COUNT = 0
    SCAV_SET = 1
    SCAV_CLEAR = 2


cdef uintptr_t scavRange(mheap* h, uintptr_t base, uintptr_t npages, int op) noexcept nogil:
    """Count the scav bits set in a page range, and set or clear them all
    (op SCAV_SET, SCAV_CLEAR) or leave them (SCAV_COUNT); the count is of
    the bits as they were."""
    cdef uintptr_t addr = base
    cdef uintptr_t end = base + (npages << PAGE_SHIFT)
    cdef uintptr_t count = 0
    cdef uintptr_t i, stop
    cdef heapArena* ha
    cdef uint64_t m
    while addr < end:
        ha = arenaOf(h, addr)
        i = pageIndex(ha, addr)
        stop = arenaStop(ha, end)
        while i < stop:
            m = wordMask(i, stop)
            count += popcount64(ha.scav[i >> 6] & m)
            if op == SCAV_SET:
                ha.scav[i >> 6] |= m
            elif op == SCAV_CLEAR:
                ha.scav[i >> 6] &= ~m
            i = (i | 63) + 1
        addr = ha.base + (stop << PAGE_SHIFT)
    return count


cdef inline uintptr_t setScav(mheap* h, uintptr_t base, uintptr_t npages, bint value) noexcept nogil:
    """Set or clear the scav bits of a page range; how many were set before."""
    return scavRange(h, base, npages, SCAV_SET if value else SCAV_CLEAR)


cdef uintptr_t countScav(mheap* h, uintptr_t base, uintptr_t npages) noexcept nogil:
    return scavRange(h, base, npages, SCAV_COUNT)


cdef uintptr_t scanScav(mheap* h, uintptr_t addr, uintptr_t end, bint clean) noexcept nogil:
    """First page address in [addr, end) whose scav bit is clean (set) or
    dirty (clear), as asked; end if there is none."""
    cdef uintptr_t i, stop
    cdef heapArena* ha
    cdef uint64_t bits
    while addr < end:
        ha = arenaOf(h, addr)
        i = pageIndex(ha, addr)
        stop = arenaStop(ha, end)
        while i < stop:
            bits = ha.scav[i >> 6]
            if not clean:
                bits = ~bits
            bits &= wordMask(i, stop)
            if bits:
                return ha.base + (((i & ~(<uintptr_t>63)) + ctz64(bits)) << PAGE_SHIFT)
            i = (i | 63) + 1
        addr = ha.base + (stop << PAGE_SHIFT)
    return end


cdef uintptr_t nextCleanPage(mheap* h, uintptr_t addr, uintptr_t end) noexcept nogil:
    """First page address in [addr, end) whose scav bit is set, else end."""
    return scanScav(h, addr, end, True)


cdef uintptr_t nextDirtyPage(mheap* h, uintptr_t addr, uintptr_t end) noexcept nogil:
    """First page address in [addr, end) whose scav bit is clear, else end."""
    return scanScav(h, addr, end, False)


# ---------------------------------------------------------------------------
# Free runs

cdef inline mSpanList* freeListFor(mheap* h, uintptr_t npages) noexcept nogil:
    if npages < MAX_FREE_LIST_PAGES:
        return &h.free[npages]
    return &h.freelarge


cdef mspan* freeNeighbour(mheap* h, uintptr_t page) noexcept nogil:
    """The free run whose first or last page is page, or NULL."""
    cdef heapArena* ha = arenaOf(h, page)
    if ha == NULL:
        return NULL
    cdef mspan* s = ha.spans[pageIndex(ha, page)]
    if s == NULL or s.state != mSpanFree or page < s.startAddr or \
            page >= s.startAddr + (s.npages << PAGE_SHIFT):
        return NULL
    return s


cdef inline void clearRunEnds(mheap* h, mspan* s) noexcept nogil:
    clearSpanEntry(h, s.startAddr)
    clearSpanEntry(h, s.startAddr + ((s.npages - 1) << PAGE_SHIFT))


cdef void insertFree(mheap* h, mspan* s) noexcept nogil:
    """Put the free run s in the page heap, merged with free neighbours
    (Go: mheap.freeSpanLocked + coalesce)."""
    cdef mspan* t
    s.state = mSpanFree
    # Pages that end up inside the merged run lose their entries (see
    # heapArena: a free run is recorded at its two ends only).
    t = freeNeighbour(h, s.startAddr - PAGE_SIZE)
    if t != NULL:
        spanListRemove(freeListFor(h, t.npages), t)
        clearRunEnds(h, t)
        clearRunEnds(h, s)
        s.startAddr = t.startAddr
        s.npages += t.npages
        t.state = mSpanDead
        fixalloc_free(&h.spanalloc, t)
    t = freeNeighbour(h, s.startAddr + (s.npages << PAGE_SHIFT))
    if t != NULL:
        spanListRemove(freeListFor(h, t.npages), t)
        clearRunEnds(h, t)
        clearRunEnds(h, s)
        s.npages += t.npages
        t.state = mSpanDead
        fixalloc_free(&h.spanalloc, t)
    setSpanEnds(h, s)
    s.freeEpoch = h.pacer.epoch         # young: see scavengeLocked
    spanListPush(freeListFor(h, s.npages), s, inFreePages)


cdef mspan* allocPages(mheap* h, uintptr_t npages) noexcept nogil:
    """Take a run of npages free pages off the free lists, splitting a longer
    run; NULL when none is long enough."""
    cdef mspan* s = NULL
    cdef mspan* t
    cdef uintptr_t n
    n = npages
    while n < MAX_FREE_LIST_PAGES:
        if h.free[n].first != NULL:
            s = h.free[n].first
            break
        n += 1
    if s == NULL:
        # Best fit among the long runs, lowest address on ties.
        t = h.freelarge.first
        while t != NULL:
            if t.npages >= npages and (s == NULL or t.npages < s.npages or
                                       (t.npages == s.npages and t.startAddr < s.startAddr)):
                s = t
            t = t.next
        if s == NULL:
            return NULL
    spanListRemove(freeListFor(h, s.npages), s)
    if s.npages > npages:
        t = <mspan*>fixalloc_alloc(&h.spanalloc)
        if t == NULL:
            spanListPush(freeListFor(h, s.npages), s, inFreePages)
            return NULL
        t.startAddr = s.startAddr + (npages << PAGE_SHIFT)
        t.npages = s.npages - npages
        t.state = mSpanFree
        t.freeEpoch = s.freeEpoch       # the rest is as old as the run it was
        setSpanEnds(h, t)
        spanListPush(freeListFor(h, t.npages), t, inFreePages)
        s.npages = npages
    return s


cdef bint registerArenas(mheap* h, uintptr_t base, uintptr_t size) noexcept nogil:
    """Create heapArena records for a fresh reservation and index them."""
    cdef uintptr_t a
    cdef heapArena* ha
    cdef arenaReservation* r = <arenaReservation*>persistentalloc(
        &h.persistent, sizeof(arenaReservation), 8)
    if r == NULL:
        return False
    a = base
    while a < base + size:
        ha = <heapArena*>persistentalloc(&h.persistent, sizeof(heapArena), 4096)
        if ha == NULL:
            return False
        ha.heap = h
        ha.base = a
        ha.next = h.allArenas
        h.allArenas = ha
        pa_storeptr(<void**>&h.arenaIndex[a >> LOG_HEAP_ARENA_BYTES], ha)
        a += HEAP_ARENA_BYTES
    r.base = base
    r.size = size
    r.next = h.reservations
    h.reservations = r
    return True


cdef bint grow(mheap* h, uintptr_t npages) noexcept nogil:
    """Add at least npages fresh pages to the free runs (Go: mheap.grow).
    False when the address space or the OS says no."""
    cdef uintptr_t ask, nbytes, base, v
    cdef mspan* s
    if npages > ((<uintptr_t>1 << ADDR_BITS) >> PAGE_SHIFT):
        return False
    ask = ((npages + HEAP_GROW_PAGES - 1) // HEAP_GROW_PAGES) * HEAP_GROW_PAGES
    ask <<= PAGE_SHIFT
    if h.curArenaEnd - h.curArenaBase < ask:
        # Not enough left in the current reservation: reserve new arenas.
        # The unmapped rest of the old one stays reserved and unused. Map
        # before indexing, so that a refused mapping leaves no metadata.
        nbytes = (ask + HEAP_ARENA_BYTES - 1) & ~(<uintptr_t>HEAP_ARENA_BYTES - 1)
        base = <uintptr_t>sysReserveAligned(nbytes, HEAP_ARENA_BYTES)
        if base == 0:
            return False
        if (base + nbytes) >> ADDR_BITS or sysMap(<void*>base, ask) != 0 or \
                not registerArenas(h, base, nbytes):
            sysFree(<void*>base, nbytes)
            return False
        h.curArenaBase = base
        h.curArenaEnd = base + nbytes
    else:
        if sysMap(<void*>h.curArenaBase, ask) != 0:
            return False
    v = h.curArenaBase
    sysHugePage(<void*>v, ask)
    if not h.pacer.metaHuge and (h.pagesMapped + (ask >> PAGE_SHIFT)) << PAGE_SHIFT > META_HUGE_BYTES:
        enableMetadataHugePages(h)
    s = <mspan*>fixalloc_alloc(&h.spanalloc)
    if s == NULL:
        return False
    h.curArenaBase += ask
    h.ngrow += 1
    npages = ask >> PAGE_SHIFT
    h.pagesMapped += npages
    h.pagesReleased += npages
    setScav(h, v, npages, True)     # fresh pages read as zero
    s.startAddr = v
    s.npages = npages
    insertFree(h, s)
    return True


# ---------------------------------------------------------------------------
# Spans in and out

cdef mspan* allocSpan(mheap* h, uintptr_t npages, int sizeclass) noexcept nogil:
    cdef mspan* s
    pa_lock(&h.lock)
    s = allocSpanLocked(h, npages, sizeclass)
    pa_unlock(&h.lock)
    return s


cdef mspan* allocSpanLocked(mheap* h, uintptr_t npages, int sizeclass) noexcept nogil:
    """An in-use span of npages pages for sizeclass (0: one large object), or
    NULL when memory cannot be had (Go: mheap.allocSpan).

    A small span's needzero says whether any of its pages may hold old data.
    A large span keeps its pages' scav bits as a map of which pages still
    read as zero, so that the caller clears only the others."""
    cdef mspan* s
    cdef uintptr_t nclean
    if h.pacer.maxPages and npages > h.pacer.maxPages:
        h.pacer.capRefused += 1
        return NULL
    s = allocPages(h, npages)
    if s == NULL:
        if not grow(h, npages):
            return NULL
        s = allocPages(h, npages)
        if s == NULL:
            return NULL
    if (h.pacer.limitPages or h.pacer.maxPages) and not underLimits(h, s):
        return NULL
    s.state = mSpanInUse
    s.list = inNoList
    s.next = NULL
    s.prev = NULL
    s.tinyRefs = NULL
    setSpans(h, s.startAddr, npages, s)
    if sizeclass == 0:
        nclean = countScav(h, s.startAddr, npages)
    else:
        nclean = setScav(h, s.startAddr, npages, False)
    h.pagesReleased -= nclean
    h.pagesInUse += npages
    initSpan(s, sizeclass, nclean < npages)
    # Open to the sanitizers: the pages may hold a debug heap's closed
    # slots from before (pyarena_sanitize.h).
    memOpen(s.startAddr, npages << PAGE_SHIFT)
    return s


cdef void freeSpan(mheap* h, mspan* s) noexcept nogil:
    pa_lock(&h.lock)
    freeSpanLocked(h, s)
    pa_unlock(&h.lock)


cdef void freeSpanLocked(mheap* h, mspan* s) noexcept nogil:
    """Return an in-use span's pages to the page heap (Go: mheap.freeSpan).
    Its pages are dirty from now on, unless the span is so large
    (RELEASE_ON_FREE_PAGES, 1 GiB) that keeping it would hold more memory
    than reusing it warm is worth: such a span is given back to the OS at
    once, as glibc unmaps a large chunk, and reads as zero when reused."""
    h.pagesInUse -= s.npages
    if s.npages >= RELEASE_ON_FREE_PAGES and physPageSize() <= PAGE_SIZE:
        # Every page becomes a released free page. The span's own scav bits
        # say nothing here: a large span keeps them set from its allocation
        # (its map of pages still zero), and allocSpanLocked already took
        # those pages out of pagesReleased.
        sysUnused(<void*>s.startAddr, s.npages << PAGE_SHIFT)
        setScav(h, s.startAddr, s.npages, True)
        h.pagesReleased += s.npages
    else:
        setScav(h, s.startAddr, s.npages, False)
    if s.tinyRefs != NULL:
        fixalloc_free(&h.tinyrefalloc, s.tinyRefs)
        s.tinyRefs = NULL
    s.list = inNoList
    # A free run keeps entries at its ends only: clear the rest, so that no
    # entry can outlive the span and name a record that is later reused
    # for other pages (spanOf trusts in-use entries without a bounds check).
    setSpans(h, s.startAddr, s.npages, NULL)
    insertFree(h, s)


cdef uintptr_t releaseRun(mheap* h, mspan* s, uintptr_t limit) noexcept nogil:
    """Give the dirty pages of free run s back to the OS, lowest first, up
    to about limit pages (whole OS pages: a little more when they are
    larger than ours); pages released."""
    cdef uintptr_t unit = PAGE_SIZE
    cdef uintptr_t phys = physPageSize()
    cdef uintptr_t lo, hi, a, b, n = 0
    if phys > unit:
        unit = phys
    # Only whole OS pages inside the run: never touch a neighbour's memory.
    lo = (s.startAddr + unit - 1) & ~(unit - 1)
    hi = (s.startAddr + (s.npages << PAGE_SHIFT)) & ~(unit - 1)
    a = lo
    while nextDirtyRun(h, &a, hi, &b):
        # a and b are page-aligned; round the run to OS pages.
        a &= ~(unit - 1)
        b = (b + unit - 1) & ~(unit - 1)
        if b > hi:
            b = hi
        if ((b - a) >> PAGE_SHIFT) > limit - n:
            b = a + (((limit - n) << PAGE_SHIFT) + unit - 1 & ~(unit - 1))
        sysUnused(<void*>a, b - a)
        n += ((b - a) >> PAGE_SHIFT) - setScav(h, a, (b - a) >> PAGE_SHIFT, True)
        a = b
        if n >= limit:
            break
    return n


cdef uintptr_t scavengeAll(mheap* h) noexcept nogil:
    """Release every free page to the OS (Go: mheap.scavengeAll); returns
    bytes released by this call."""
    cdef uintptr_t n = 0
    cdef int i
    cdef mspan* s
    pa_lock(&h.lock)
    for i in range(MAX_FREE_LIST_PAGES):
        s = h.free[i].first
        while s != NULL:
            n += releaseRun(h, s, ALL_PAGES)
            s = s.next
    s = h.freelarge.first
    while s != NULL:
        n += releaseRun(h, s, ALL_PAGES)
        s = s.next
    h.pagesReleased += n
    pa_unlock(&h.lock)
    return n << PAGE_SHIFT


# ---------------------------------------------------------------------------
# Limits (see _mgcpacer.pyx for the pacer, the memory limit's other half,
# and the background scavenger). Heap lock held throughout.

cdef inline bint oldEnough(mheap* h, mspan* s, uint32_t minAge) noexcept nogil:
    # Generations wrap: compare by their difference.
    return <uint32_t>(h.pacer.epoch - s.freeEpoch) >= minAge


cdef uintptr_t scavengeLocked(mheap* h, uintptr_t npages, uint32_t minAge) noexcept nogil:
    """Release up to about npages dirty free pages to the OS, from the
    largest free runs down (Go's scavenger works from the highest address
    down; largest first here, because releasing a long run splits nothing
    that small allocations would reuse warm); runs freed less than minAge
    scavenger generations ago are left alone (0: any run). Pages released,
    counted in pagesReleased. Heap lock held."""
    cdef uintptr_t n = 0
    cdef uintptr_t dirty
    # No more than the dirty free pages there are: above a soft limit with
    # live memory the cause, the excess never reaches 0, and the walk below
    # must stop once nothing is left to release (it holds the heap lock).
    if h.pagesMapped <= h.pagesInUse + h.pagesReleased:
        return 0
    dirty = h.pagesMapped - h.pagesInUse - h.pagesReleased
    if npages > dirty:
        npages = dirty
    cdef uintptr_t lastPages = ALL_PAGES
    cdef uintptr_t lastAddr = 0
    cdef mspan* s
    cdef mspan* best
    cdef int i
    # The long runs, in order of size (then address), by repeated selection:
    # the list is short (runs of 1 MiB and more), and the walk stops as soon
    # as enough is released.
    while n < npages:
        best = NULL
        s = h.freelarge.first
        while s != NULL:
            if (s.npages < lastPages or (s.npages == lastPages and s.startAddr > lastAddr)) and \
                    (best == NULL or s.npages > best.npages or
                     (s.npages == best.npages and s.startAddr < best.startAddr)):
                best = s
            s = s.next
        if best == NULL:
            break
        lastPages = best.npages
        lastAddr = best.startAddr
        if oldEnough(h, best, minAge):
            n += releaseRun(h, best, npages - n)
    i = MAX_FREE_LIST_PAGES - 1
    while i > 0 and n < npages:
        s = h.free[i].first
        while s != NULL and n < npages:
            if oldEnough(h, s, minAge):
                n += releaseRun(h, s, npages - n)
            s = s.next
        i -= 1
    h.pagesReleased += n
    return n


cdef inline uint64_t dirtyIdle(mheap* h, uintptr_t taken) noexcept nogil:
    """Dirty pages in the free runs, less the taken run's own (off the lists,
    still counted free): all that scavengeLocked could release. Above a
    soft limit with live memory the cause, the excess never reaches 0; the
    walk must stop when this does (it holds the heap lock)."""
    cdef uint64_t free = h.pagesMapped - h.pagesInUse
    if free <= h.pagesReleased + taken:
        return 0
    return free - h.pagesReleased - taken


cdef bint underLimits(mheap* h, mspan* s) noexcept nogil:
    """allocSpanLocked's look at the limits, for the free run s it took
    (off the free lists, its scav bits as they were): the pages it uses
    that read as zero are pages the OS must now provide, so the heap's
    retained memory (pagesMapped - pagesReleased) grows by them. Over the
    soft limit (Go's GOMEMLIMIT), the allocating thread releases idle
    pages for the excess first (Go: mheap.allocSpan's scavenge for the
    memory limit) and allocates whatever is left; over the hard cap after
    releasing what it can, s goes back and the allocation fails."""
    cdef uintptr_t nclean = countScav(h, s.startAddr, s.npages)
    cdef uint64_t retained = h.pagesMapped - h.pagesReleased + nclean
    cdef uintptr_t r
    cdef uint64_t idle = dirtyIdle(h, s.npages - nclean)
    if h.pacer.limitPages and retained > h.pacer.limitPages and idle:
        r = scavengeLocked(h, min(retained - h.pacer.limitPages, idle), 0)
        h.pacer.limitReleased += r
        retained -= r
        idle -= min(r, idle)
    if h.pacer.maxPages and retained > h.pacer.maxPages:
        if idle:
            r = scavengeLocked(h, min(retained - h.pacer.maxPages, idle), 0)
            h.pacer.limitReleased += r
            retained -= r
        if retained > h.pacer.maxPages:
            h.pacer.capRefused += 1
            insertFree(h, s)
            return False
    return True


cdef void enableMetadataHugePages(mheap* h) noexcept nogil:
    """The heap passed 1 GiB: its metadata (the persistent chunks and
    blocks, and the chunks to come) is advised as transparent huge pages,
    where the kernel says what a huge page is (Go:
    mheap.enableMetadataHugePages: at this size the TLB misses on span
    records and bitmaps cost more than the memory a huge page may hold
    idle). Heap lock held."""
    if physHugePageSize() == 0:
        return
    h.pacer.metaHuge = 1
    persistentHugePages(&h.persistent)
