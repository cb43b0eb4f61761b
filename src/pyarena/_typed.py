"""Typed allocation's view of ctypes: Go's newobject and newarray (and
reflect's unsafe_New, unsafe_NewArray) take a runtime type; here that is a
NumPy dtype (read by _ndarray) or a ctypes type, read here: a simple type,
a Structure or Union subclass, an array type or a pointer type. The face
(_face.pyx: Allocator.new and newarray) allocates zeroed memory of the
type's size and alignment from a Heap or an Arena and makes the value: a
ctypes type gives an instance living in that memory (``t.from_buffer`` of
a Block of exactly its size), which keeps the memory alive.

Types that would put Python object references into the memory (dtype
object, ctypes.py_object, structures containing them) are refused: nothing
would keep those objects alive.
"""

from __future__ import annotations

import ctypes

__all__ = ["is_ctypes_type", "ctypes_layout"]

_CTYPES_BASES = (ctypes._SimpleCData, ctypes.Structure, ctypes.Union, ctypes.Array,
                 ctypes._Pointer)


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
