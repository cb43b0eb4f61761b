# The Python objects of pyarena, and the C-level API on Heap. See _heap.pyx.
# Other packages cimport Heap through pyarena/__init__.pxd.
from libc.stdint cimport uint64_t, uintptr_t
from pyarena._types cimport mheap, mcache, mspan

cdef class Block
cdef class Heap

cdef size_t checkAlign(object align) except 0

cdef class Heap:
    cdef mheap* h
    cdef bint _closed
    cdef object _final
    cdef object _capsule
    # Arena chunks given back, kept for the next arena (_arena.pyx).
    cdef mspan* _chunkPool[4]
    cdef uintptr_t _chunkDirty[4]
    cdef int _npool

    # The C-level API: C's meanings, any thread, no GIL needed.
    cdef void* malloc(self, size_t size) noexcept nogil
    cdef void* calloc(self, size_t n, size_t size) noexcept nogil
    cdef void* realloc(self, void* p, size_t size) noexcept nogil
    cdef void free(self, void* p) noexcept nogil
    cdef size_t usable_size(self, void* p) noexcept nogil

    cdef void _destroy(self)
    cdef void _dropChunkPool(self)
    cdef void _dropOwnLargeSpare(self)
    cdef mcache* _cache(self) except NULL
    cdef mcache* _peekCache(self) noexcept nogil
    cdef Block _alloc(self, Py_ssize_t nbytes, size_t align, bint zero)
    cdef Block _tryAlloc(self, Py_ssize_t nbytes, size_t align, bint zero)
    cdef Block _typedBlock(self, size_t size, size_t align)
    cdef uintptr_t _allocRaw(self, size_t nbytes, size_t align, bint zero, int* cls) except? 0
    cdef object _makeCapsule(self)
    cdef bint _ownsEmpty(self, object obj)
    cdef object _stats(self)
    cdef object _array(self, object shape, object dtype, object order, bint zero)
    cdef object _arrayIn(self, object shape, object dtype, bint fortran, object perm, bint zero)
    cdef object _like(self, object a, object dtype, object order, object shape, bint zero)

cdef class Block:
    cdef readonly Heap heap
    cdef object _owner         # an arena chunk: the Block frees nothing
    cdef uintptr_t ptr
    cdef Py_ssize_t _nbytes
    cdef size_t _slot
    cdef int _sizeclass
    cdef bint _tiny
