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
 * Lifetime: the table lives in the Heap object and stays valid while the
 * object lives. After Heap.close() its functions allocate nothing (NULL)
 * and frees of the heap's pointers still work; once the heap's memory is
 * unmapped (close() with nothing alive) it is a table that allocates and
 * frees nothing. Keep a reference to the Heap for as long as its pointers
 * or its table are in use. None is not a Heap: the calls below give NULL
 * (and free nothing) for it rather than crash.
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
 * pointer to its extension type's method table, then a pointer to the
 * allocator table. pyarena's tests check the offset (tests/test_extending:
 * pyarena._testing.capi_offset), so code compiled against this header finds
 * the table without a call. Nothing else of the object is public. */
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

/* The table every call on None goes to: nothing is allocated or freed. */
static void *pyarena_none_malloc(void *ctx, size_t n) { (void)ctx; (void)n; return NULL; }
static void *pyarena_none_calloc(void *ctx, size_t a, size_t b)
{ (void)ctx; (void)a; (void)b; return NULL; }
static void *pyarena_none_realloc(void *ctx, void *p, size_t n)
{ (void)ctx; (void)p; (void)n; return NULL; }
static void pyarena_none_free(void *ctx, void *p) { (void)ctx; (void)p; }
static size_t pyarena_none_usable_size(void *ctx, void *p) { (void)ctx; (void)p; return 0; }
static const pyarena_allocator pyarena_none_allocator = {
    NULL, pyarena_none_malloc, pyarena_none_calloc, pyarena_none_realloc,
    pyarena_none_free, pyarena_none_usable_size};

static inline const pyarena_allocator *pyarena_heap_allocator(PyObject *heap)
{
    if (heap == Py_None)
        return &pyarena_none_allocator;
    return ((pyarena_HeapObject *)heap)->allocator;
}

static inline void *pyarena_heap_malloc(PyObject *heap, size_t size)
{
    const pyarena_allocator *a = pyarena_heap_allocator(heap);
    return a->malloc(a->ctx, size);
}

static inline void *pyarena_heap_calloc(PyObject *heap, size_t nelem, size_t elsize)
{
    const pyarena_allocator *a = pyarena_heap_allocator(heap);
    return a->calloc(a->ctx, nelem, elsize);
}

static inline void *pyarena_heap_realloc(PyObject *heap, void *ptr, size_t size)
{
    const pyarena_allocator *a = pyarena_heap_allocator(heap);
    return a->realloc(a->ctx, ptr, size);
}

static inline void pyarena_heap_free(PyObject *heap, void *ptr)
{
    const pyarena_allocator *a = pyarena_heap_allocator(heap);
    a->free(a->ctx, ptr);
}

static inline size_t pyarena_heap_usable_size(PyObject *heap, void *ptr)
{
    const pyarena_allocator *a = pyarena_heap_allocator(heap);
    return a->usable_size(a->ctx, ptr);
}

#endif /* PYARENA_CAPI_H */
