# Central span lists, one per size class (Go: mcentral.go). See _mcentral.pyx.
from pyarena._types cimport mheap, mspan

cdef mspan* cacheSpan(mheap* h, int sizeclass) noexcept nogil
cdef void uncacheSpan(mheap* h, mspan* s) noexcept nogil
cdef void freeSlot(mheap* h, mspan* s, unsigned int idx) noexcept nogil
