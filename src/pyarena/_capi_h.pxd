# Declarations of pyarena_capi.h, the public C-level API's header, shared by
# the public pyarena/__init__.pxd and the allocator's own _types.pxd.
from cpython.object cimport PyObject

cdef extern from "pyarena_capi.h" nogil:
    # A heap's C-level function table: a->malloc(a->ctx, n) and so on.
    ctypedef struct pyarena_allocator:
        void* ctx
        void* (*malloc)(void* ctx, size_t size) noexcept nogil
        void* (*calloc)(void* ctx, size_t nelem, size_t elsize) noexcept nogil
        void* (*realloc)(void* ctx, void* ptr, size_t new_size) noexcept nogil
        void (*free)(void* ctx, void* ptr) noexcept nogil
        size_t (*usable_size)(void* ctx, void* ptr) noexcept nogil

    # A pyarena.Heap object, opaque: reach its table with the functions.
    ctypedef struct pyarena_HeapObject:
        pass

    void* pyarena_heap_malloc(PyObject* heap, size_t size)
    void* pyarena_heap_calloc(PyObject* heap, size_t nelem, size_t elsize)
    void* pyarena_heap_realloc(PyObject* heap, void* ptr, size_t size)
    void pyarena_heap_free(PyObject* heap, void* ptr)
    size_t pyarena_heap_usable_size(PyObject* heap, void* ptr)
    const pyarena_allocator* pyarena_heap_allocator(PyObject* heap)
