# The OS layer (Go: mem.go, mem_linux.go). See _mem.pyx.

cdef void* sysReserve(size_t n) noexcept nogil
cdef void* sysReserveAligned(size_t n, size_t align) noexcept nogil
cdef int sysMap(void* v, size_t n) noexcept nogil
cdef void sysUsed(void* v, size_t n) noexcept nogil
cdef void sysUnused(void* v, size_t n) noexcept nogil
cdef void sysHugePage(void* v, size_t n) noexcept nogil
cdef void sysNoHugePage(void* v, size_t n) noexcept nogil
cdef void sysFault(void* v, size_t n) noexcept nogil
cdef void sysFree(void* v, size_t n) noexcept nogil
cdef void* sysAllocOS(size_t n) noexcept nogil

cdef size_t physPageSize() noexcept nogil
cdef size_t physHugePageSize() noexcept nogil
cdef unsigned int physHugePageShift() noexcept nogil
