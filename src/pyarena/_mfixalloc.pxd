# Fixed-size record allocator (Go: mfixalloc.go).
#
# Records of one size (span records, mcaches, tiny reference tables) are
# carved from 16 KiB pieces of persistent memory and recycled through a free
# list threaded through their first word. The memory never goes back to the
# OS while the heap lives, so a stale pointer to a freed record still points
# at a record (the page heap relies on that when it validates spans[]).
# Records come back zeroed: fresh ones are, and fixfree clears them.

from libc.stdint cimport uintptr_t
from libc.string cimport memset
from pyarena._types cimport fixalloc, persistentAlloc, FIX_ALLOC_CHUNK
from pyarena._persistentalloc cimport persistentalloc


cdef inline void fixinit(fixalloc* f, uintptr_t size, persistentAlloc* a) noexcept nogil:
    f.size = (size + 15) & ~(<uintptr_t>15)
    f.list = NULL
    f.chunk = 0
    f.nchunk = 0
    f.inuse = 0
    f.persistent = a


cdef inline void* fixalloc_alloc(fixalloc* f) noexcept nogil:
    """A zeroed record, or NULL when the OS refuses memory."""
    cdef void* v
    if f.list != NULL:
        v = f.list
        f.list = (<void**>v)[0]
        (<void**>v)[0] = NULL
        f.inuse += f.size
        return v
    if f.nchunk < f.size:
        f.chunk = <uintptr_t>persistentalloc(f.persistent, FIX_ALLOC_CHUNK, 64)
        if f.chunk == 0:
            return NULL
        f.nchunk = FIX_ALLOC_CHUNK
    v = <void*>f.chunk
    f.chunk += f.size
    f.nchunk -= f.size
    f.inuse += f.size
    return v


cdef inline void fixalloc_free(fixalloc* f, void* p) noexcept nogil:
    memset(p, 0, f.size)
    (<void**>p)[0] = f.list
    f.list = p
    f.inuse -= f.size
