# The allocator face: what every pyarena allocator offers Python, written
# once over one raw allocation primitive. See _face.pyx.
from libc.stdint cimport uintptr_t
from cpython.object cimport PyObject
from pyarena._types cimport mheap, pyarena_allocator
from pyarena._ndarray cimport arraySpec


cdef struct placement:
    # Where _place put a value, and who frees it.
    uintptr_t addr        # its first byte
    size_t slot           # bytes it occupies (Block.slot_size)
    int sizeclass         # 0: large, zero-size, or an arena value
    bint tiny             # carved from a tiny block (its free must say so)
    bint chunked          # in an arena chunk: the chunk (the owner) frees it
    mheap* h              # the heap the memory belongs to
    PyObject* heap        # that heap's Heap object (borrowed: the owner holds it)


cdef class Block


cdef class Allocator:
    # Must stay the first field (after the method table): pyarena_capi.h
    # reads a Heap's C-level function table from there. NULL for an
    # allocator with no C-level API (Arena).
    cdef const pyarena_allocator* _capi
    # The NEP 49 handler capsule that owns this allocator's heap arrays
    # (Heap); None when its arrays are owned by their base (Arena).
    cdef object _capsule

    cdef object _place(self, size_t nbytes, size_t align, bint zero, placement* pl)
    cdef bint _ownsRange(self, uintptr_t lo, uintptr_t hi) except -1
    cdef bint _ownsBlock(self, Block b) except -1
    cdef bint _ownsEmpty(self, object obj) except -1

    cdef object _newArray(self, object descr, arraySpec* spec, bint fortran, bint zero)
    cdef Block _newBlock(self, size_t nbytes, size_t align, bint zero)
    cdef object _newCtypes(self, object t, size_t size, size_t align)
    cdef object _zeros(self, object shape, object dtype, object order, bint zero)


cdef class Block:
    cdef readonly object heap      # the Heap the memory belongs to
    cdef object _owner             # an arena chunk: the Block frees nothing
    cdef mheap* h
    cdef uintptr_t ptr
    cdef Py_ssize_t _nbytes
    cdef size_t _slot
    cdef int _sizeclass
    cdef bint _tiny


cdef int toAlign(object align, size_t* out) except -1
