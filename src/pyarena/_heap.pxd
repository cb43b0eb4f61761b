# The Heap: a pyarena allocator over an mheap of its own. See _heap.pyx.
from pyarena._types cimport mheap, mcache, pyarena_allocator
from pyarena._face cimport placement
from pyarena._face cimport Allocator

cdef class Heap(Allocator):
    cdef mheap* h
    cdef bint _closed
    cdef object _final          # the stats of a heap unmapped by close()
    # The C-level table this heap hands out (Allocator._capi points here):
    # in the object, so that it outlives the mheap for as long as any C
    # code can reach the Heap.
    cdef pyarena_allocator _table

    cdef void _destroy(self)
    cdef object _setLimit(self, limit)
    cdef object _stats(self)
    cdef object _placeDebug(self, mcache* c, size_t nbytes, size_t align, bint zero,
                            placement* pl)
    cdef bint _pendingFindings(self) noexcept
    cdef int _raiseFindings(self) except -1
