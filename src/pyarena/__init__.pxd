# pyarena's C-level API, for `cimport pyarena` / `from pyarena cimport Heap`.
#
# A Heap's cdef methods have C's meanings and run without the GIL from any
# number of threads (per-thread caches, no lock on the fast path):
#
#     void* Heap.malloc(size_t size)                 16-aligned; NULL on failure
#     void* Heap.calloc(size_t n, size_t size)       zeroed, overflow-checked
#     void* Heap.realloc(void* p, size_t size)       keeps the contents
#     void  Heap.free(void* p)                       free(NULL) is a no-op
#     size_t Heap.usable_size(void* p)               bytes usable at p
#
# Rules: free a pointer on the heap that made it; hold a reference to the
# Heap (a `cdef Heap` variable) for as long as its pointers are in use.
# Freeing a pointer twice, or one the heap did not make, is detected,
# reported with a RuntimeWarning, counted in MemStats.invalid_frees, and
# ignored. Compile with include_dirs=[pyarena.get_include()].

from pyarena._heap cimport Heap
