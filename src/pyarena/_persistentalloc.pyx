# cython: language_level=3
"""Persistent metadata: memory for the allocator's own records (Go:
persistentalloc and persistentChunks in malloc.go).

Span records, mcaches, tiny reference counts and the like live as long as
their heap and are never returned one by one, so they are carved from 256 KiB
chunks with a bump pointer, the cheapest allocator there is. Fixed-size
records that are recycled sit on fixalloc free lists on top of this
(_mfixalloc.pxd). None of it comes from Python objects or from the heap it
describes.

Go keeps one process-wide persistentalloc that never frees. A pyarena heap
can be destroyed, so each heap has its own, and persistentfreeall unmaps its
chunks when the heap goes. Requests of 64 KiB and more (Go: maxBlock) get a
mapping of their own, also listed so that it can be unmapped.

Once the heap is large (1 GiB: mheap.enableMetadataHugePages), every chunk
and block is advised as transparent huge pages, and new chunks are cut from
groups aligned to the huge page size, so that a group's chunks can share one
huge page (a 256 KiB chunk alone never fills one). A group's chunks are
listed one by one, like any chunk; persistentfreeall unmaps them one by one
and the group's unused tail with them.

Chunks come from the OS zeroed, and nothing handed out here is ever reused
by this layer, so persistentalloc memory reads as zero.
"""

from libc.stdint cimport uintptr_t
from pyarena._types cimport persistentAlloc, PERSISTENT_CHUNK_SIZE, PERSISTENT_MAX_BLOCK
from pyarena._mem cimport sysAllocOS, sysFree, sysHugePage, physHugePageSize
from pyarena._mem cimport sysReserveAligned, sysMap


cdef void* persistentalloc(persistentAlloc* a, size_t size, size_t align) noexcept nogil:
    """Zeroed metadata of size bytes aligned to align (0 means 8; at most a
    physical page). NULL when the OS refuses memory."""
    cdef uintptr_t p
    cdef size_t total
    if align == 0:
        align = 8
    if size >= PERSISTENT_MAX_BLOCK:
        # Own mapping; its first 16 bytes link it for persistentfreeall. The
        # block starts a page in so that it stays page-aligned.
        total = size + 4096
        p = <uintptr_t>sysAllocOS(total)
        if p == 0:
            return NULL
        if a.huge:
            sysHugePage(<void*>p, total)
        (<void**>p)[0] = a.bigs
        (<uintptr_t*>p)[1] = total
        a.bigs = <void*>p
        a.sys += total
        return <void*>(p + 4096)
    a.off = (a.off + align - 1) & ~(<uintptr_t>align - 1)
    if a.base == 0 or a.off + size > PERSISTENT_CHUNK_SIZE:
        p = newChunk(a)
        if p == 0:
            return NULL
        (<void**>p)[0] = a.chunks
        a.chunks = <void*>p
        a.base = p
        a.sys += PERSISTENT_CHUNK_SIZE
        a.nchunks += 1
        # The link word sits at offset 0; keep it out of every block.
        a.off = (sizeof(void*) + align - 1) & ~(<uintptr_t>align - 1)
    p = a.base + a.off
    a.off += size
    return <void*>p


cdef uintptr_t newChunk(persistentAlloc* a) noexcept nogil:
    """A fresh chunk: mapped alone, or cut from the current huge-page group
    once huge pages are on (a new group when it is used up); 0 when the OS
    refuses."""
    cdef uintptr_t p
    cdef size_t hp = physHugePageSize()
    if not a.huge or hp < PERSISTENT_CHUNK_SIZE:
        return <uintptr_t>sysAllocOS(PERSISTENT_CHUNK_SIZE)
    if a.groupNext == a.groupEnd:
        p = <uintptr_t>sysReserveAligned(hp, hp)
        if p == 0:
            return 0
        if sysMap(<void*>p, hp) != 0:
            sysFree(<void*>p, hp)
            return 0
        sysHugePage(<void*>p, hp)
        a.groupNext = p
        a.groupEnd = p + hp
    p = a.groupNext
    a.groupNext += PERSISTENT_CHUNK_SIZE
    return p


cdef void persistentHugePages(persistentAlloc* a) noexcept nogil:
    """Advise every chunk and block as huge pages, and cut the chunks to
    come from huge-page groups (enableMetadataHugePages)."""
    cdef void* c = a.chunks
    a.huge = 1
    while c != NULL:
        sysHugePage(c, PERSISTENT_CHUNK_SIZE)
        c = (<void**>c)[0]
    c = a.bigs
    while c != NULL:
        sysHugePage(c, (<uintptr_t*>c)[1])
        c = (<void**>c)[0]


cdef bint inPersistentAlloc(persistentAlloc* a, void* p) noexcept nogil:
    """Whether p lies in memory this allocator handed out (Go:
    inPersistentAlloc, used there to tell metadata from heap pointers)."""
    cdef uintptr_t q = <uintptr_t>p
    cdef void* c = a.chunks
    while c != NULL:
        if <uintptr_t>c < q < <uintptr_t>c + PERSISTENT_CHUNK_SIZE:
            return True
        c = (<void**>c)[0]
    c = a.bigs
    while c != NULL:
        if <uintptr_t>c + 4096 <= q < <uintptr_t>c + (<uintptr_t*>c)[1]:
            return True
        c = (<void**>c)[0]
    return False


cdef void persistentfreeall(persistentAlloc* a) noexcept nogil:
    """Unmap everything; the records in it must not be used again."""
    cdef void* c = a.chunks
    cdef void* nxt
    while c != NULL:
        nxt = (<void**>c)[0]
        sysFree(c, PERSISTENT_CHUNK_SIZE)
        c = nxt
    c = a.bigs
    while c != NULL:
        nxt = (<void**>c)[0]
        sysFree(c, (<uintptr_t*>c)[1])
        c = nxt
    if a.groupNext != a.groupEnd:
        sysFree(<void*>a.groupNext, a.groupEnd - a.groupNext)
    a.groupNext = a.groupEnd = 0
    a.chunks = NULL
    a.bigs = NULL
    a.base = 0
    a.off = 0
    a.sys = 0
    a.nchunks = 0
