# cython: language_level=3
"""The OS layer: address space and pages from the kernel (Go: mem.go,
mem_linux.go).

Go's runtime talks to the OS through a handful of verbs, each a state change
of a range of address space:

    None --sysReserve--> Reserved --sysMap--> Prepared/Ready
    Ready --sysUnused--> Prepared (pages given back, contents gone)
    Prepared --sysUsed--> Ready
    any --sysFree--> None;  any --sysFault--> Reserved

On Linux "Prepared" and "Ready" are the same mapping: a page given back with
MADV_DONTNEED reads as zero on its next touch, which is what lets the page
heap skip clearing released pages. Huge-page advice (sysHugePage) is taken
for the heap arenas: a 2 MiB transparent huge page faults in several times
faster than 512 small ones on this kind of machine.

Failures are reported as NULL or -1; callers turn them into MemoryError at
the Python boundary. Nothing here touches Python objects.
"""

from libc.stdint cimport uintptr_t
from libc.stdio cimport FILE, fopen, fscanf, fclose

cdef extern from "<sys/mman.h>" nogil:
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void* addr, size_t length)
    int mprotect(void* addr, size_t length, int prot)
    int madvise(void* addr, size_t length, int advice)
    void* MAP_FAILED
    int PROT_NONE, PROT_READ, PROT_WRITE
    int MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED, MAP_NORESERVE
    int MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE

cdef extern from "<unistd.h>" nogil:
    long sysconf(int name)
    int _SC_PAGESIZE


cdef size_t _physPageSize = 0
cdef size_t _physHugePageSize = 0
cdef unsigned int _physHugePageShift = 0


cdef void* sysReserve(size_t n) noexcept nogil:
    """Reserve n bytes of address space, inaccessible and not committed."""
    cdef void* p = mmap(NULL, n, PROT_NONE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
    if p == MAP_FAILED:
        return NULL
    return p


cdef void* sysReserveAligned(size_t n, size_t align) noexcept nogil:
    """Reserve n bytes aligned to align (a power of two): reserve n + align,
    then unmap the unaligned head and the tail (Go: sysReserveAligned)."""
    cdef char* p = <char*>sysReserve(n + align)
    if p == NULL:
        return NULL
    cdef uintptr_t base = (<uintptr_t>p + align - 1) & ~(<uintptr_t>align - 1)
    cdef size_t head = base - <uintptr_t>p
    if head:
        munmap(p, head)
    cdef size_t tail = align - head
    if tail:
        munmap(<void*>(base + n), tail)
    return <void*>base


cdef int sysMap(void* v, size_t n) noexcept nogil:
    """Make reserved memory readable and writable. Its pages read as zero
    until first written. Returns 0, or -1 when the kernel refuses.

    The range is mapped afresh rather than mprotect-ed: a new private
    writable mapping is charged against the kernel's overcommit limit, so a
    request the machine cannot back fails here, cleanly, as it does for Go
    and for malloc, instead of succeeding and being OOM-killed on touch."""
    cdef void* p = mmap(v, n, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
    if p == MAP_FAILED:
        # MAP_FIXED replaced nothing on failure; the range stays reserved.
        return -1
    return 0


cdef void sysUsed(void* v, size_t n) noexcept nogil:
    """Memory given back by sysUnused is about to be used again. On Linux the
    mapping is still there and faults pages back in on touch: nothing to do,
    as in Go (sysUsedOS only re-enables huge pages there)."""
    pass


cdef void sysUnused(void* v, size_t n) noexcept nogil:
    """Give the pages back to the OS; they read as zero when touched again."""
    madvise(v, n, MADV_DONTNEED)


cdef void sysHugePage(void* v, size_t n) noexcept nogil:
    """Ask for transparent huge pages over the range (page-aligned part)."""
    if _physHugePageSize:
        madvise(v, n, MADV_HUGEPAGE)


cdef void sysNoHugePage(void* v, size_t n) noexcept nogil:
    if _physHugePageSize:
        madvise(v, n, MADV_NOHUGEPAGE)


cdef void sysFault(void* v, size_t n) noexcept nogil:
    """Make the range fault on any access, keeping it reserved (Go uses this
    for freed user arenas and for debugging use-after-free)."""
    mmap(v, n, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)


cdef void sysFree(void* v, size_t n) noexcept nogil:
    """Return the address range to the OS entirely."""
    munmap(v, n)


cdef void* sysAllocOS(size_t n) noexcept nogil:
    """Fresh readable, writable, zeroed memory straight from the OS (for
    metadata: persistentalloc chunks and arena indexes)."""
    cdef void* p = mmap(NULL, n, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if p == MAP_FAILED:
        return NULL
    return p


cdef size_t physPageSize() noexcept nogil:
    return _physPageSize


cdef size_t physHugePageSize() noexcept nogil:
    return _physHugePageSize


cdef unsigned int physHugePageShift() noexcept nogil:
    return _physHugePageShift


cdef void _osinit() noexcept nogil:
    # Go: osinit reads physPageSize from the auxiliary vector and
    # osArchInit/mallocinit read the huge page size from sysfs. A size that is
    # not a power of two is treated as "no huge pages".
    global _physPageSize, _physHugePageSize, _physHugePageShift
    _physPageSize = <size_t>sysconf(_SC_PAGESIZE)
    cdef unsigned long v = 0
    cdef FILE* f = fopen(b"/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", b"r")
    if f != NULL:
        if fscanf(f, b"%lu", &v) != 1:
            v = 0
        fclose(f)
    if v == 0 or (v & (v - 1)) != 0:
        v = 0
    _physHugePageSize = v
    _physHugePageShift = 0
    while v > 1:
        v >>= 1
        _physHugePageShift += 1


_osinit()

PHYS_PAGE_SIZE = _physPageSize
PHYS_HUGE_PAGE_SIZE = _physHugePageSize
PHYS_HUGE_PAGE_SHIFT = _physHugePageShift
