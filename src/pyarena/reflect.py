"""Go's reflect entry points for allocation by runtime type, on the default
heap: thin aliases of ``Heap.new`` and ``Heap.newarray``.

``unsafe_New(t)`` is Go's reflect_unsafe_New (and reflectlite_unsafe_New);
``unsafe_NewArray(t, n)`` is reflect_unsafe_NewArray. ``t`` is a NumPy dtype
or a ctypes type, as for ``Heap.new``.
"""

from pyarena._heap import default_heap

__all__ = ["unsafe_New", "unsafe_NewArray"]


def unsafe_New(t):
    """``pyarena.default_heap().new(t)``: one zeroed value of type ``t``."""
    return default_heap().new(t)


def unsafe_NewArray(t, n):
    """``pyarena.default_heap().newarray(t, n)``: ``n`` zeroed values."""
    return default_heap().newarray(t, n)
