# Size-class lookup (Go: msize.go and the lookup in mallocgc). The tables are
# generated into sizeclasses.h by tools/mksizeclasses.py.

from pyarena._types cimport (pyarena_size_to_class8, pyarena_size_to_class128,
                             pyarena_size_to_class8_align16,
                             pyarena_class_to_minalign, SMALL_SIZE_MAX,
                             NUM_SIZE_CLASSES)


cdef inline int sizeToClass(size_t size) noexcept nogil:
    """The smallest class holding size bytes; 1 <= size <= MAX_SMALL_SIZE.
    Sizes up to SMALL_SIZE_MAX (1024, table index 128) use the 8-byte table,
    so 1017..1024 never meet the unsigned wrap of (size - 1024)."""
    if size <= SMALL_SIZE_MAX:
        return pyarena_size_to_class8[(size + 7) >> 3]
    return pyarena_size_to_class128[(size - SMALL_SIZE_MAX + 127) >> 7]


cdef inline int alignedClass(size_t size, size_t align) noexcept nogil:
    """The smallest class holding size bytes whose every slot is aligned to
    align, and to 16 when size >= 16 (the 24-byte class is only 8-aligned).
    0 when no small class qualifies: the object is allocated large."""
    cdef int c = sizeToClass(size)
    if size >= 16 and align < 16:
        align = 16
    while c < NUM_SIZE_CLASSES and pyarena_class_to_minalign[c] < align:
        c += 1
    if c == NUM_SIZE_CLASSES:
        return 0
    return c


cdef inline int sizeToClass16(size_t size) noexcept nogil:
    """alignedClass(size, 16) for 1 <= size <= MAX_SMALL_SIZE, by table: the
    generated size_to_class8_align16 moves the two classes that are less than
    16-aligned (8 and 24 bytes) to the next class up, which is 16-aligned;
    every class above 1024 bytes is a multiple of 128 (tests/test_api checks
    both against the table)."""
    if size <= SMALL_SIZE_MAX:
        return pyarena_size_to_class8_align16[(size + 7) >> 3]
    return pyarena_size_to_class128[(size - SMALL_SIZE_MAX + 127) >> 7]
