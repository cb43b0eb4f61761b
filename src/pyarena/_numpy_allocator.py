"""pyarena as NumPy's data allocator (NEP 49).

NumPy allocates array data through a handler kept in a context variable.
``numpy_allocator()`` makes a heap's handler current for a ``with`` block
(the calling thread's context); ``install_numpy_allocator()`` makes NumPy
allocate from the heap in every thread until ``uninstall_numpy_allocator()``
(or in one context, with ``scope="context"``).
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

from pyarena._heap import Heap, default_heap, _install_process, _set_process
from pyarena._ndarray import get_data_handler, set_data_handler

__all__ = ["numpy_allocator", "install_numpy_allocator", "uninstall_numpy_allocator",
           "tune_malloc"]

# Handlers replaced by install_numpy_allocator, innermost last. A context
# variable, as NumPy's handler is: each thread (and task) has its own.
_saved: contextvars.ContextVar[tuple] = contextvars.ContextVar("pyarena_saved_handlers",
                                                                default=())


def _checkHeap(heap) -> Heap:
    heap = heap if heap is not None else default_heap()
    if not isinstance(heap, Heap):
        raise TypeError(f"heap must be a pyarena.Heap, not {type(heap).__name__}")
    return heap


@contextlib.contextmanager
def _handlerBlock(heap: Heap) -> Iterator[Heap]:
    previous = set_data_handler(heap.numpy_handler())
    try:
        yield heap
    finally:
        set_data_handler(previous)


def numpy_allocator(heap: Heap | None = None) -> contextlib.AbstractContextManager[Heap]:
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
    # The argument is checked at the call, not at the block's entry.
    return _handlerBlock(_checkHeap(heap))


# Heaps installed process-wide, innermost last (one list for the process,
# as the install is).
_process: list = []


def install_numpy_allocator(heap: Heap | None = None, *, scope: str = "process") -> Heap:
    """Make NumPy allocate array data from ``heap`` until
    ``uninstall_numpy_allocator()``.

    Parameters
    ----------
    heap : Heap, optional
        The heap to allocate from; the default heap if omitted.
    scope : {"process", "context"}, optional
        ``"process"`` (the default): every thread, started before the
        install or after, thread pools and C threads included, as an
        allocator preloaded with ``LD_PRELOAD`` would be; arrays made
        before the install are freed by the allocator that made them.
        pyarena edits NumPy's default handler for this, so
        ``get_handler_name()`` says ``"pyarena"`` for every array of the
        default handler; the heap stays mapped for the rest of the process.
        ``"context"``: the calling thread's context only, like the
        ``numpy_allocator`` block; other threads keep their handler.

    Returns
    -------
    Heap
        The heap in use.

    Notes
    -----
    A ``numpy_allocator`` block, or a context install, takes precedence
    over the process-wide install inside its context, as any handler made
    current does.
    """
    heap = _checkHeap(heap)
    if scope == "process":
        _install_process(heap)
        _process.append(heap)
    elif scope == "context":
        _saved.set(_saved.get() + (set_data_handler(heap.numpy_handler()),))
    else:
        raise ValueError(f"scope must be 'process' or 'context', not {scope!r}")
    return heap


def uninstall_numpy_allocator(*, scope: str = "process") -> None:
    """Undo the last ``install_numpy_allocator()`` of this scope; nothing
    when none is in force.

    ``"process"``: the heap installed before it (or NumPy's own allocator)
    makes new arrays again; arrays of the heap stay valid and are freed to
    it. ``"context"``: the handler current before the last context install
    of this context is current again (pair it with its install inside any
    ``numpy_allocator`` block, whose exit restores what was current when it
    began).
    """
    if scope == "process":
        if _process:
            _process.pop()
            _set_process(_process[-1] if _process else None)
    elif scope == "context":
        saved = _saved.get()
        if saved:
            _saved.set(saved[:-1])
            set_data_handler(saved[-1])
    else:
        raise ValueError(f"scope must be 'process' or 'context', not {scope!r}")


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30,
                top_pad: int = 256 << 20) -> bool:
    """Keep glibc's malloc from giving memory back to the OS between uses,
    for the allocations NumPy's data handler never sees.

    NumPy's LAPACK and FFT wrappers take their scratch buffers straight from
    ``malloc``; with glibc's defaults a buffer of a few MiB is a fresh
    ``mmap`` each time, and so a page fault per 4 KiB each time. This sets,
    from inside the running process, what the environment variables
    ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` and
    ``MALLOC_TOP_PAD_`` would set at start-up (``mallopt``): blocks below
    ``mmap_threshold`` come from the heap, which keeps up to
    ``trim_threshold`` free bytes instead of trimming them, and grows by
    ``top_pad`` extra. Together with ``install_numpy_allocator()`` it covers
    both kinds of traffic without ``LD_PRELOAD``.

    Returns
    -------
    bool
        True when glibc took all three settings; False on a C library
        without ``mallopt`` (nothing is changed then).
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = True
    for param, value in ((_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold),
                         (_M_TOP_PAD, top_pad)):
        if not 0 <= value < 1 << 31:
            raise ValueError(f"mallopt values must fit an int, got {value}")
        ok = bool(mallopt(param, value)) and ok
    return ok


def current_handler_name() -> str:
    """The name of NumPy's current data handler ("pyarena" when ours)."""
    import ctypes

    cap = get_data_handler()
    getp = ctypes.pythonapi.PyCapsule_GetPointer
    getp.restype = ctypes.c_void_p
    getp.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return ctypes.string_at(getp(cap, b"mem_handler")).decode()
