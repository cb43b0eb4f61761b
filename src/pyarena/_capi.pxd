# The C-level API and the NEP 49 handler. See _capi.pyx.
from libc.stdint cimport uintptr_t
from pyarena._types cimport mheap, pyarena_allocator

cdef void initAllocator(pyarena_allocator* a, mheap* h) noexcept nogil
cdef const pyarena_allocator* closedAllocator() noexcept nogil
cdef object newHandlerCapsule(mheap* h)
cdef int installProcessHeap(mheap* h) except -1
cdef int setProcessHeap(mheap* h) except -1
