# The page heap and the address space (Go: mheap.go, heapArena in malloc.go).
# See _mheap.pyx.

from libc.stdint cimport uint64_t, uintptr_t, uint32_t
from pyarena._types cimport (mheap, mspan, heapArena, mSpanInUse, PAGE_SHIFT, PAGE_SIZE,
                             LOG_HEAP_ARENA_BYTES, ARENA_INDEX_BITS,
                             ADDR_BITS, PAGES_PER_ARENA, pa_loadptr)

cdef mheap* mheap_new() noexcept nogil
cdef void mheap_destroy(mheap* h) noexcept nogil
cdef void freeSpanLocked(mheap* h, mspan* s) noexcept nogil
cdef mspan* allocSpan(mheap* h, uintptr_t npages, int sizeclass) noexcept nogil
cdef void freeSpan(mheap* h, mspan* s) noexcept nogil
cdef uintptr_t scavengeAll(mheap* h) noexcept nogil
cdef uintptr_t countScav(mheap* h, uintptr_t base, uintptr_t npages) noexcept nogil
cdef uintptr_t nextCleanPage(mheap* h, uintptr_t addr, uintptr_t end) noexcept nogil
cdef uintptr_t nextDirtyPage(mheap* h, uintptr_t addr, uintptr_t end) noexcept nogil


cdef inline heapArena* arenaOf(mheap* h, uintptr_t p) noexcept nogil:
    """The heap's arena holding address p, or NULL (Go: the arenas index
    walked by spanOf): one load."""
    if p >> ADDR_BITS:
        return NULL
    return <heapArena*>pa_loadptr(<void**>&h.arenaIndex[p >> LOG_HEAP_ARENA_BYTES])


cdef inline mspan* spanOf(mheap* h, uintptr_t p) noexcept nogil:
    """The in-use span holding address p, or NULL: for any address, in the
    heap or not, in O(1) (Go: spanOf + the mSpanInUse check of
    spanOfHeap). Arenas are 64 MiB-aligned, so the page's entry is bits
    13..25 of p; spans[] has no stale entries (see heapArena), so an entry
    in state mSpanInUse is the span holding p."""
    cdef heapArena* ha = arenaOf(h, p)
    if ha == NULL:
        return NULL
    cdef mspan* s = ha.spans[(p >> PAGE_SHIFT) & (PAGES_PER_ARENA - 1)]
    if s == NULL or s.state != mSpanInUse:
        return NULL
    return s


cdef inline bint nextDirtyRun(mheap* h, uintptr_t* a, uintptr_t end, uintptr_t* b) noexcept nogil:
    """The next run of pages in [*a, end) whose scav bits are clear (pages
    that may hold old data), as [*a, *b); False when there is none. Every
    loop that clears or releases only what is dirty walks with it."""
    a[0] = nextDirtyPage(h, a[0], end)
    if a[0] >= end:
        return False
    b[0] = nextCleanPage(h, a[0], end)
    return True

# Limits and the scavenger (the rest of them in _mgcpacer).
cdef uintptr_t scavengeLocked(mheap* h, uintptr_t npages, uint32_t minAge) noexcept nogil
