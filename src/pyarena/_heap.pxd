# The Heap: a pyarena allocator over an mheap of its own. See _heap.pyx.
from pyarena._types cimport mheap, mcache
from pyarena._face cimport Allocator

cdef class Heap(Allocator):
    cdef mheap* h
    cdef bint _closed
    cdef object _final          # the stats of a heap unmapped by close()

    cdef void _destroy(self)
    cdef object _stats(self)
