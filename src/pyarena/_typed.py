"""Typed allocation: Go's newobject and newarray (and reflect's unsafe_New,
unsafe_NewArray), with Python's runtime types in place of Go's _type.

A type is either a NumPy dtype (anything ``numpy.dtype`` accepts) or a
ctypes type: a simple type, a Structure or Union subclass, an array type
or a pointer type. Memory for it comes zeroed from a Heap or an Arena; a
dtype gives a NumPy array, a ctypes type an instance of it living in that
memory (``t.from_buffer``), which keeps the memory alive.

Types that would put Python object references into the memory (dtype
object, ctypes.py_object, structures containing them) are refused: nothing
would keep those objects alive.
"""

from __future__ import annotations

import ctypes
import operator

import numpy as np

__all__ = ["is_ctypes_type", "ctypes_layout", "array_bytes", "dtype_itemsize"]

_CTYPES_BASES = (ctypes._SimpleCData, ctypes.Structure, ctypes.Union, ctypes.Array,
                 ctypes._Pointer)

# Go's maxAlloc on linux/amd64 (as in _heap.pyx): no request past it can be met.
MAX_ALLOC = 1 << 47
_SIZE_MAX = (1 << 64) - 1


def is_ctypes_type(t) -> bool:
    """Whether t is a ctypes data type (not a dtype)."""
    return isinstance(t, type) and issubclass(t, _CTYPES_BASES)


def _check_no_objects(t, seen=()) -> None:
    if t in seen:
        return
    if issubclass(t, ctypes._SimpleCData):
        if getattr(t, "_type_", None) == "O":
            raise TypeError(f"pyarena memory cannot hold Python object references: "
                            f"{t.__name__}")
    elif issubclass(t, (ctypes.Structure, ctypes.Union)):
        for field in getattr(t, "_fields_", ()):
            _check_no_objects(field[1], seen + (t,))
    elif issubclass(t, ctypes.Array):
        _check_no_objects(t._type_, seen + (t,))
    # A pointer type holds an address, not a reference: allowed.


# type -> (size, alignment): checking a structure's fields on every call
# would cost more than the allocation. Bounded; ctypes itself caches its
# array types, so the same types come back.
_layouts: dict = {}


def ctypes_layout(t) -> tuple[int, int]:
    """(size, alignment) of a ctypes type, after refusing types that hold
    Python object references."""
    got = _layouts.get(t)
    if got is None:
        _check_no_objects(t)
        got = (ctypes.sizeof(t), ctypes.alignment(t))
        if len(_layouts) >= 4096:
            _layouts.clear()
        _layouts[t] = got
    return got


def dtype_itemsize(t) -> int:
    """Itemsize of a dtype argument, refusing object dtypes."""
    d = np.dtype(t)
    if d.hasobject:
        raise TypeError(f"pyarena memory cannot hold Python object references: dtype {d}")
    return d.itemsize


def array_bytes(size: int, n) -> int:
    """n * size for newarray, checked as Go's newarray checks it, before any
    memory is touched: n < 0 is a ValueError; a product past size_t is an
    OverflowError and one past the address space a MemoryError, both with
    Go's message "allocation size out of range"."""
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"negative count: {n}")
    if size and n > _SIZE_MAX // size:
        raise OverflowError("allocation size out of range")
    total = n * size
    if total > MAX_ALLOC:
        raise MemoryError("allocation size out of range")
    return total
