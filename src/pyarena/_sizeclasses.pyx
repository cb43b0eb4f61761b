# cython: language_level=3
"""The size-class table, seen from Python: ``size_class`` and
``size_classes``. The table itself is generated (tools/mksizeclasses.py ->
sizeclasses.h); this module only reads it."""

from pyarena._types cimport (pyarena_class_to_size, pyarena_class_to_allocnpages,
                             pyarena_class_to_nelems, pyarena_class_to_minalign,
                             pyarena_class_to_divmagic, MAX_SMALL_SIZE, PAGE_SIZE,
                             PAGE_SHIFT, NUM_SIZE_CLASSES)
from pyarena._msize cimport sizeToClass
from collections import namedtuple

PAGE_SIZE_ = PAGE_SIZE
MAX_SMALL_SIZE_ = MAX_SMALL_SIZE
NUM_SIZE_CLASSES_ = NUM_SIZE_CLASSES

SizeClass = namedtuple(
    "SizeClass",
    ["size_class", "bytes_per_obj", "bytes_per_span", "npages", "objects",
     "tail_waste", "max_waste_pct", "min_align", "div_magic"])
SizeClass.__doc__ = """One row of the size-class table, Go's columns.

``max_waste_pct`` is the worst case share of the span lost when every
object is one byte larger than the previous class's size, tail waste
included."""


def size_class(Py_ssize_t nbytes):
    """The size class an allocation of ``nbytes`` bytes uses.

    Parameters
    ----------
    nbytes : int
        Requested size, >= 0.

    Returns
    -------
    (size_class, slot_size) : tuple of int
        The class (0 for a large object, which gets whole pages) and the
        bytes it occupies: the class's slot size, or the large object's
        pages. ``(0, 0)`` for ``nbytes == 0``.

    Notes
    -----
    This is the plain lookup of Go's mallocgc. ``Heap.alloc`` may pick a
    larger class when asked for an alignment, and never uses the 8-aligned
    24-byte class for 16 bytes or more.
    """
    if nbytes < 0:
        raise ValueError(f"negative size: {nbytes}")
    if nbytes == 0:
        return (0, 0)
    if nbytes > MAX_SMALL_SIZE:
        return (0, ((nbytes + PAGE_SIZE - 1) >> PAGE_SHIFT) << PAGE_SHIFT)
    cdef int c = sizeToClass(<size_t>nbytes)
    return (c, pyarena_class_to_size[c])


def size_classes():
    """The size-class table as a tuple of ``SizeClass`` rows, classes 1..67."""
    rows = []
    cdef int c
    cdef long size, span, objects, tail, prev = 0
    for c in range(1, NUM_SIZE_CLASSES):
        size = pyarena_class_to_size[c]
        span = pyarena_class_to_allocnpages[c] * PAGE_SIZE
        objects = pyarena_class_to_nelems[c]
        tail = span - objects * size
        rows.append(SizeClass(c, size, span, pyarena_class_to_allocnpages[c], objects,
                              tail, round(100.0 * ((size - prev - 1) * objects + tail) / span, 2),
                              pyarena_class_to_minalign[c], pyarena_class_to_divmagic[c]))
        prev = size
    return tuple(rows)
