/* pyarena's public C-level API: the header behind pyarena/__init__.pxd.
 *
 * A pyarena.Heap hands out one function table, a pyarena_allocator, with
 * C's meanings (malloc, calloc, realloc, free) and usable_size. Every
 * function runs without the GIL, from any number of threads, and never
 * raises: failure is NULL, a bad free is reported (RuntimeWarning), counted
 * in MemStats.invalid_frees and ignored. The table is the same shape as
 * NumPy's PyDataMemAllocator and numpy.random's bitgen_t: a context and
 * function pointers, so a caller needs nothing of pyarena's internals.
 *
 * Two ways to reach it:
 *   - from Cython, `from pyarena cimport Heap` and `heap.malloc(n)` (the
 *     inline methods of pyarena/__init__.pxd call the functions below);
 *   - from C, pyarena_heap_allocator(heap) on a pyarena.Heap object.
 *
 * Lifetime: the table stays valid while the Heap object lives. After
 * Heap.close() its functions allocate nothing (NULL) and frees of the
 * heap's pointers still work; keep a reference to the Heap for as long as
 * its pointers are in use.
 */
#ifndef PYARENA_CAPI_H
#define PYARENA_CAPI_H

#include <Python.h>
#include <stddef.h>

typedef struct pyarena_allocator {
    void *ctx;                                           /* the heap */
    void *(*malloc)(void *ctx, size_t size);             /* 16-aligned */
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr);
    size_t (*usable_size)(void *ctx, void *ptr);
} pyarena_allocator;

/* The head of every pyarena.Heap object: after the object header, the
 * pointer to its extension type's method table, then the allocator table.
 * pyarena's own build checks the offset (pyarena._testing.capi_layout and
 * a test), so code compiled against this header finds the table without
 * a call. Nothing else of the object is public. */
typedef struct {
    PyObject_HEAD
    void *pyarena_private_vtab;
    const pyarena_allocator *allocator;
} pyarena_HeapObject;

/* Cython 3 imports a method table for an extern type that declares inline
 * methods (as pyarena/__init__.pxd does for Heap) without declaring the
 * pointer it imports into; this is that pointer. The inline methods never
 * read it: they go through the allocator table above. */
#ifdef CYTHON_INLINE
static void *__pyx_vtabptr_7pyarena_Heap;
#endif

static inline const pyarena_allocator *pyarena_heap_allocator(PyObject *heap)
{
    return ((pyarena_HeapObject *)heap)->allocator;
}

static inline void *pyarena_heap_malloc(PyObject *heap, size_t size)
{
    const pyarena_allocator *a = ((pyarena_HeapObject *)heap)->allocator;
    return a->malloc(a->ctx, size);
}

static inline void *pyarena_heap_calloc(PyObject *heap, size_t nelem, size_t elsize)
{
    const pyarena_allocator *a = ((pyarena_HeapObject *)heap)->allocator;
    return a->calloc(a->ctx, nelem, elsize);
}

static inline void *pyarena_heap_realloc(PyObject *heap, void *ptr, size_t size)
{
    const pyarena_allocator *a = ((pyarena_HeapObject *)heap)->allocator;
    return a->realloc(a->ctx, ptr, size);
}

static inline void pyarena_heap_free(PyObject *heap, void *ptr)
{
    const pyarena_allocator *a = ((pyarena_HeapObject *)heap)->allocator;
    a->free(a->ctx, ptr);
}

static inline size_t pyarena_heap_usable_size(PyObject *heap, void *ptr)
{
    const pyarena_allocator *a = ((pyarena_HeapObject *)heap)->allocator;
    return a->usable_size(a->ctx, ptr);
}

#endif /* PYARENA_CAPI_H */
