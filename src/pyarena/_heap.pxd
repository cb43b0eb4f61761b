# The Python objects of pyarena. See _heap.pyx.
from libc.stdint cimport uintptr_t
cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    pthread_t pthread_self()
from pyarena._types cimport mheap, mcache

cdef class Block
cdef class Heap

cdef class _CacheOwner:
    cdef mcache* c

cdef class Heap:
    cdef mheap* h
    cdef object _tls
    cdef bint _closed
    cdef object _final
    cdef object _capsule
    cdef pthread_t _tid
    cdef mcache* _tcache
    cdef void _destroy(self)
    cdef mcache* _cache(self) except NULL
    cdef mcache* _cacheSlow(self) except NULL
    cdef Block _alloc(self, Py_ssize_t nbytes, size_t align, bint zero)
    cdef Block _tryAlloc(self, Py_ssize_t nbytes, size_t align, bint zero)
    cdef uintptr_t _allocRaw(self, size_t nbytes, size_t align, bint zero, int* cls) except? 0
    cdef object _makeCapsule(self)
    cdef bint _ownsEmpty(self, object obj)
    cdef object _stats(self)
    cdef object _array(self, object shape, object dtype, object order, bint zero)
    cdef object _arrayIn(self, object shape, object dtype, bint fortran, object perm, bint zero)
    cdef object _like(self, object a, object dtype, object order, object shape, bint zero)

cdef class Block:
    cdef readonly Heap heap
    cdef uintptr_t ptr
    cdef Py_ssize_t _nbytes
    cdef size_t _slot
    cdef int _sizeclass
    cdef bint _tiny
