# pyarena's C-level API, for `cimport pyarena` / `from pyarena cimport Heap`.
#
# Only this is public; the rest of pyarena's .pxd files are its internals.
# A Heap object hands out a table of C functions (pyarena_capi.h); these
# declarations reach it with no call into pyarena but the function itself.
# Every function has C's meaning, runs without the GIL from any number of
# threads, and never raises:
#
#     cdef pyarena.Heap heap = pyarena.default_heap()
#     cdef void* p = heap.malloc(64)         # 16-aligned; NULL on failure
#     heap.free(p)
#
# Rules: free a pointer on the heap that made it; hold a reference to the
# Heap (a `cdef Heap` variable, as above) for as long as its pointers are in
# use. After Heap.close() nothing more is allocated (NULL) and frees still
# work. Freeing a pointer twice, or one the heap did not make, is reported
# with a RuntimeWarning, counted in MemStats.invalid_frees, and ignored.
# Compile with include_dirs=[pyarena.get_include()].

from cpython.object cimport PyObject
# The function table a Heap hands out, for C code or for keeping in a
# struct (a.malloc(a.ctx, n) and so on), and the same calls as functions
# of a Heap object: see pyarena_capi.h.
from pyarena._capi_h cimport (pyarena_allocator, pyarena_HeapObject, pyarena_heap_malloc,
                              pyarena_heap_calloc, pyarena_heap_realloc, pyarena_heap_free,
                              pyarena_heap_usable_size, pyarena_heap_allocator)

cdef extern from "pyarena_capi.h" nogil:
    # pyarena.Heap, as other packages see it: an opaque object with these
    # methods (no attribute of it is public). `cdef Heap h = obj` checks
    # that obj is a pyarena.Heap.
    ctypedef class pyarena.Heap [object pyarena_HeapObject, check_size ignore]:

        cdef inline void* malloc(self, size_t size) noexcept nogil:
            """size bytes, 16-aligned (C's malloc); NULL when memory cannot
            be had or the heap is closed. malloc(0) returns the zero-size
            address, which free accepts."""
            return pyarena_heap_malloc(<PyObject*>self, size)

        cdef inline void* calloc(self, size_t nelem, size_t elsize) noexcept nogil:
            """nelem * elsize zeroed bytes (C's calloc): NULL on overflow or
            without memory. Memory known to be zero is not cleared again."""
            return pyarena_heap_calloc(<PyObject*>self, nelem, elsize)

        cdef inline void* realloc(self, void* ptr, size_t size) noexcept nogil:
            """C's realloc: the contents up to the smaller size are kept;
            realloc(NULL, n) is malloc(n). NULL, and ptr untouched, on
            failure or from a closed heap."""
            return pyarena_heap_realloc(<PyObject*>self, ptr, size)

        cdef inline void free(self, void* ptr) noexcept nogil:
            """C's free: free(NULL) does nothing; a pointer the heap does not
            hold live is reported and ignored."""
            pyarena_heap_free(<PyObject*>self, ptr)

        cdef inline size_t usable_size(self, void* ptr) noexcept nogil:
            """Bytes usable at ptr (its slot from ptr on); 0 if ptr is not a
            live allocation of this heap."""
            return pyarena_heap_usable_size(<PyObject*>self, ptr)

        cdef inline const pyarena_allocator* allocator(self) noexcept nogil:
            """The heap's function table (valid while the Heap lives)."""
            return pyarena_heap_allocator(<PyObject*>self)
