"""pyarena as NumPy's data allocator (NEP 49).

NumPy allocates array data through a handler kept in a context variable.
``numpy_allocator()`` makes a heap's handler current for a ``with`` block;
``install_numpy_allocator()`` does so until ``uninstall_numpy_allocator()``.
Every array NumPy makes meanwhile (``np.ones``, results of arithmetic,
copies) takes its data from the heap, and gives it back there when it
dies, whenever that is: the handler and the heap outlive every array made
under them, also after the block ends and after ``Heap.close()``.

NumPy itself reports these allocations to tracemalloc (domain 389047);
pyarena does not report them again.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from pyarena._heap import Heap, default_heap
from pyarena._ndarray import get_data_handler, set_data_handler

__all__ = ["numpy_allocator", "install_numpy_allocator", "uninstall_numpy_allocator"]

# Handlers replaced by install_numpy_allocator, innermost last. A context
# variable, as NumPy's handler is: each thread (and task) has its own.
_saved: contextvars.ContextVar[tuple] = contextvars.ContextVar("pyarena_saved_handlers",
                                                                default=())


def _handler(heap: Heap | None):
    return (heap if heap is not None else default_heap()).numpy_handler()


@contextlib.contextmanager
def numpy_allocator(heap: Heap | None = None) -> Iterator[Heap]:
    """Make NumPy allocate array data from ``heap`` inside a ``with`` block.

    Parameters
    ----------
    heap : Heap, optional
        The heap to allocate from; the default heap if omitted.

    Yields
    ------
    Heap
        The heap in use.

    Notes
    -----
    NumPy keeps its handler in a context variable: the block affects the
    current thread (and asyncio tasks started inside it), not other threads.
    On exit the previous handler is current again.

    Examples
    --------
    >>> import numpy as np, pyarena
    >>> with pyarena.numpy_allocator():
    ...     a = np.ones(1000) * 2
    >>> from numpy._core.multiarray import get_handler_name
    >>> get_handler_name(a)
    'pyarena'
    """
    heap = heap if heap is not None else default_heap()
    previous = set_data_handler(heap.numpy_handler())
    try:
        yield heap
    finally:
        set_data_handler(previous)


def install_numpy_allocator(heap: Heap | None = None) -> Heap:
    """Make ``heap``'s handler NumPy's current one until
    ``uninstall_numpy_allocator()``; in the calling thread's context (see
    ``numpy_allocator``). Returns the heap."""
    heap = heap if heap is not None else default_heap()
    _saved.set(_saved.get() + (set_data_handler(heap.numpy_handler()),))
    return heap


def uninstall_numpy_allocator() -> None:
    """Undo the last ``install_numpy_allocator()`` of this thread (context);
    nothing when none is in force. Pair it with its install inside any
    ``numpy_allocator`` block, whose exit restores what was current when it
    began."""
    saved = _saved.get()
    if saved:
        _saved.set(saved[:-1])
        set_data_handler(saved[-1])


def current_handler_name() -> str:
    """The name of NumPy's current data handler ("pyarena" when ours)."""
    import ctypes

    cap = get_data_handler()
    getp = ctypes.pythonapi.PyCapsule_GetPointer
    getp.restype = ctypes.c_void_p
    getp.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return ctypes.string_at(getp(cap, b"mem_handler")).decode()
