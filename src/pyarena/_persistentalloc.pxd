# Persistent metadata allocation (Go: persistentalloc in malloc.go).
# See _persistentalloc.pyx.
from pyarena._types cimport persistentAlloc

cdef void* persistentalloc(persistentAlloc* a, size_t size, size_t align) noexcept nogil
cdef bint inPersistentAlloc(persistentAlloc* a, void* p) noexcept nogil
cdef void persistentfreeall(persistentAlloc* a) noexcept nogil
cdef void persistentHugePages(persistentAlloc* a) noexcept nogil
