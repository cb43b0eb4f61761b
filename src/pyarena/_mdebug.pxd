# The debug heap's primitives: redzones, fill patterns, findings. See
# _mdebug.pyx.
from libc.stdint cimport uintptr_t, intptr_t
from pyarena._types cimport mheap, mspan

cdef enum:
    # The patterns (CPython's debug allocator's bytes, so that a dump reads
    # the same): memory handed out uninitialised, memory freed, redzones.
    FRESH_BYTE = 0xCD
    FREED_BYTE = 0xDD
    CANARY_BYTE = 0xFD

    # Kinds of finding.
    DBG_REDZONE = 1           # a redzone damaged (an overflow), seen at free
    DBG_FREED_WRITTEN = 2     # a freed slot written (a write after free)
    DBG_BAD_FREE = 3          # a free of a pointer not allocated here
    DBG_DOUBLE_FREE = 4       # a free of an object already freed


cdef inline size_t redzoneSize(size_t n) noexcept nogil:
    """Go's computeRZlog (malloc.go, -asan): the redzone after an object of
    n bytes, 16 B up to 48 B and doubling at each boundary to 2 KiB."""
    if n <= 64 - 16:
        return 16
    if n <= 128 - 32:
        return 32
    if n <= 512 - 64:
        return 64
    if n <= 4096 - 128:
        return 128
    if n <= (1 << 14) - 256:
        return 256
    if n <= (1 << 15) - 512:
        return 512
    if n <= (1 << 16) - 1024:
        return 1024
    return 2048


cdef uintptr_t slotOf(mspan* s) noexcept nogil
cdef void armRedzone(uintptr_t p, size_t n, uintptr_t slot) noexcept nogil
cdef bint redzoneSizeOf(uintptr_t p, uintptr_t slot, size_t* n) noexcept nogil
cdef intptr_t redzoneDamage(uintptr_t p, uintptr_t slot, size_t* n) noexcept nogil
cdef intptr_t freedDamage(uintptr_t p, uintptr_t slot) noexcept nogil
cdef void poisonFreed(uintptr_t p, uintptr_t slot) noexcept nogil
cdef void dbgRecord(mheap* h, int kind, uintptr_t addr, uintptr_t size, intptr_t offset,
                    uintptr_t other, void* bucket) noexcept nogil
cdef void dbgWarn(mheap* h, int kind, uintptr_t addr, uintptr_t size, intptr_t offset,
                  uintptr_t other, void* bucket) noexcept nogil
cdef object dbgTake(mheap* h)
