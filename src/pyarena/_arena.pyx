# cython: language_level=3
"""Arenas: bump allocation in big chunks, everything freed at once (Go's
arena experiment, arena.go, on linearAlloc from malloc.go).

An Arena takes 8 MiB chunks (by default) from a heap's page heap, each as
one large span, and carves values out of the current chunk with a bump
pointer: Go's linearAlloc, with next, mapped and end. "Mapped" here is the
end of the part of the chunk made ready for use, advanced a page at a time
as next passes it: pages that may hold old data are cleared then, pages
known to be zero (fresh from the OS, or given back) are not touched, so an
arena pays for exactly the memory it uses, when it uses it. Every value an
arena hands out reads as zero. Objects larger than a quarter chunk go to
the heap, as in Go.

An Arena is an Allocator (_face.pyx): its _place bumps the pointer, and
the face makes the values. Lifetime. Every value holds a reference to its
chunk: an array's base is the chunk, a Block names it as owner, a ctypes
value holds a view of such a Block. The chunk exports no buffer of its
own: no object handed to Python is a window onto more of the chunk than
the value it stands for, which is what lets the arena trust that memory
past its bump pointer was never written.
Arena.free() drops the arena's own references: a chunk nobody else holds
goes back at once, a chunk with values still alive goes back when the last
of them dies, so Python never sees memory that was reused. free(strict=True)
instead refuses (BufferError) while any value is alive. Given-back chunks
wait in a small pool on the heap and are reused by later arenas without
new mappings (_malloc's user-arena chunk pool); Arena.stats() counts
those reuses.
"""

cimport cython
from cpython.object cimport PyObject
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from libc.stdint cimport uint64_t, uintptr_t
from libc.string cimport memset
from pyarena._types cimport (mheap, mcache, mspan, PAGE_SIZE, PAGE_SHIFT, PYARENA_TRACE_DOMAIN,
                             PyTraceMalloc_Track, PyTraceMalloc_Untrack)
from pyarena._heap cimport Heap
from pyarena._face cimport Allocator, Block, placement
from pyarena._mcache cimport getmcacheGIL
from pyarena._malloc cimport allocUserArenaChunk, freeUserArenaChunk
from pyarena._mheap cimport nextDirtyRun

cdef extern from "Python.h":
    Py_ssize_t Py_REFCNT(PyObject* o)
    object PyNumber_Index(object o)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1

import ctypes
from dataclasses import dataclass

import numpy as np

from pyarena._heap import default_heap

# The base class of every ctypes instance (not exported by name).
_CDATA = next(c for c in ctypes.c_int.__mro__ if c.__name__ == "_CData")


@dataclass(frozen=True, slots=True)
class ArenaStats:
    """Figures of one Arena.

    Attributes
    ----------
    bytes_allocated : int
        Bytes handed out from its chunks (as requested, alignment padding
        excluded).
    chunks : int
        Chunks the arena holds now.
    bytes_mapped : int
        Bytes of its chunks made ready for use (Go's linearAlloc.mapped).
    chunks_reused : int
        Chunks taken from the heap's pool of given-back chunks, with no
        new mapping.
    large_values : int
        Values larger than a quarter chunk, allocated on the heap instead.
    live_values : int
        Values still referring to its chunks.
    """

    bytes_allocated: int
    chunks: int
    bytes_mapped: int
    chunks_reused: int
    large_values: int
    live_values: int


@cython.final
@cython.binding(False)
cdef class _Chunk:
    """One arena chunk: a large object of the heap, and Go's linearAlloc
    over it. Its memory goes back to the heap (its pool of chunks) when
    this object dies, which is after the last value in it. It exports no
    buffer: values are reached through their own arrays and Blocks."""
    cdef Heap heap
    cdef mspan* span
    cdef uintptr_t base, next, mapped, end
    # Below dirtyEnd the pages may hold data from an earlier arena; above it
    # the span's scav bits say which pages read as zero.
    cdef uintptr_t dirtyEnd

    def __dealloc__(self):
        cdef Heap heap = self.heap
        if self.span == NULL or heap is None or heap.h == NULL:
            return
        # Everything below mapped may have been written; nothing above it
        # was ever handed out.
        PyTraceMalloc_Untrack(PYARENA_TRACE_DOMAIN, self.base)
        freeUserArenaChunk(heap.h, self.span,
                           self.mapped if self.mapped > self.dirtyEnd else self.dirtyEnd)
        self.span = NULL

    def __reduce__(self):
        raise TypeError("cannot pickle or copy an arena chunk")

    cdef void prepare(self, uintptr_t upto) noexcept:
        """Make [mapped, upto) ready: clear what may hold old data (Go:
        linearAlloc maps on demand, a physical page at a time). Cleared with
        the GIL held (at most a quarter chunk at a time): releasing it would
        let another thread bump-allocate from this chunk, inside the range
        being cleared."""
        cdef uintptr_t a, b, stop
        cdef mheap* h = self.heap.h
        upto = (upto + PAGE_SIZE - 1) & ~(<uintptr_t>PAGE_SIZE - 1)
        if upto > self.end:
            upto = self.end
        a = self.mapped
        if upto <= a:
            return
        if a < self.dirtyEnd:
            stop = upto if upto < self.dirtyEnd else self.dirtyEnd
            memset(<void*>a, 0, stop - a)
            a = stop
        while nextDirtyRun(h, &a, upto, &b):
            memset(<void*>a, 0, b - a)
            a = b
        self.mapped = upto


@cython.binding(False)
cdef class Arena(Allocator):
    """A region for values that die together: bump allocation in chunks
    taken from a heap, everything freed at once (Go's arena experiment).

    Parameters
    ----------
    chunk_size : int, optional
        Bytes per chunk, a multiple of ``PAGE_SIZE`` up to 64 GiB (default
        8 MiB, Go's userArenaChunkBytes). Values larger than a quarter
        chunk are allocated on the heap.
    heap : Heap, optional
        The heap that supplies chunks; the default heap if omitted.

    Notes
    -----
    It has every allocation method of ``Allocator`` (``alloc``, ``zeros``,
    ``empty``, ``full``, the ``*_like`` trio, ``new``, ``newarray``,
    ``owns``); every value reads as zero. ``free()`` gives it all back;
    values still referenced stay valid until they die. ``with Arena() as
    a:`` frees on exit, also when the block raises. An arena is not safe
    for use by several threads at once.
    """
    cdef Heap heap
    cdef size_t chunkSize
    cdef list chunks
    cdef _Chunk cur
    cdef bint _freed
    cdef uint64_t allocated, mappedTotal, reused, large

    def __cinit__(self):
        # Safe from here on: every method of an arena whose __init__ never
        # ran raises "Arena is not initialised" (heap is None).
        self.heap = None
        self.chunks = []
        self.cur = None
        self._freed = False

    def __init__(self, chunk_size=8 << 20, heap=None):
        cdef int overflow = 0
        cdef long long n
        if self.heap is not None:
            raise ValueError("Arena is already initialised")
        n = PyLong_AsLongLongAndOverflow(PyNumber_Index(chunk_size), &overflow)
        if overflow or n < PAGE_SIZE or n % PAGE_SIZE or n > (1 << 36):
            raise ValueError(f"chunk_size must be a multiple of {PAGE_SIZE} up to 64 GiB, "
                             f"got {n if not overflow else 'a value out of range'}")
        if heap is not None and not isinstance(heap, Heap):
            raise TypeError(f"heap must be a pyarena.Heap, not {type(heap).__name__}")
        self.chunkSize = <size_t>n
        self.heap = heap if heap is not None else default_heap()

    cdef int _check(self) except -1:
        if self.heap is None:
            raise ValueError("Arena is not initialised")
        if self._freed:
            raise ValueError("allocation from a freed arena")
        return 0

    cdef _Chunk _newChunk(self):
        """A chunk from the heap's pool or a new large object, made current.
        Every Python object is made before any heap state changes: making
        one may run a collection, and a finalizer could free this arena or
        close its heap."""
        cdef Heap heap = self.heap
        cdef _Chunk ch = _Chunk.__new__(_Chunk)
        cdef mcache* c
        cdef mspan* s
        cdef uintptr_t dirty
        cdef bint reused
        if heap.h == NULL or heap._closed:
            raise ValueError("the arena's heap is closed")
        c = getmcacheGIL(heap.h)      # a thread's first cache makes objects too
        self._check()                 # so look again: freed meanwhile?
        if heap.h == NULL or heap._closed:
            raise ValueError("the arena's heap is closed")
        s = allocUserArenaChunk(heap.h, c, self.chunkSize >> PAGE_SHIFT, &dirty, &reused)
        if s == NULL:
            raise MemoryError(f"cannot allocate an arena chunk of {self.chunkSize} bytes")
        if reused:
            self.reused += 1
        ch.heap = heap
        ch.span = s
        ch.base = ch.next = ch.mapped = s.startAddr
        ch.end = s.startAddr + self.chunkSize
        ch.dirtyEnd = dirty
        PyTraceMalloc_Track(PYARENA_TRACE_DOMAIN, ch.base, self.chunkSize)
        self.chunks.append(ch)
        self.cur = ch
        return ch

    cdef object _place(self, size_t nbytes, size_t align, bint zero, placement* pl):
        """nbytes aligned to align from the current chunk (a new one when it
        is full), ready and zero: Go's linearAlloc.alloc. A value over a
        quarter chunk, or of zero bytes, is the heap's."""
        cdef _Chunk ch
        cdef uintptr_t p, before
        self._check()
        if nbytes == 0 or nbytes > self.chunkSize // 4:
            if nbytes:
                self.large += 1
            return self.heap._place(nbytes, align, True, pl)
        if align == 0:
            align = 16 if nbytes >= 16 else 8
        elif align < 8:
            align = 8
        ch = self.cur
        if ch is not None:
            p = (ch.next + align - 1) & ~(<uintptr_t>align - 1)
        if ch is None or p + nbytes > ch.end:
            ch = self._newChunk()
            p = (ch.next + align - 1) & ~(<uintptr_t>align - 1)
        ch.next = p + nbytes
        if ch.next > ch.mapped:
            before = ch.mapped
            ch.prepare(ch.next)
            self.mappedTotal += ch.mapped - before
        self.allocated += nbytes
        pl.addr = p
        pl.slot = nbytes
        pl.sizeclass = 0
        pl.tiny = False
        pl.chunked = True
        pl.h = self.heap.h
        pl.heap = <PyObject*>self.heap
        return ch

    cdef bint _ownsRange(self, uintptr_t lo, uintptr_t hi) except -1:
        cdef _Chunk ch
        for ch in self.chunks:
            if ch.base <= lo and hi < ch.next:
                return True
        return False

    cdef bint _ownsBlock(self, Block b) except -1:
        if b._nbytes == 0:
            return False
        return self._ownsRange(b.ptr, b.ptr + <uintptr_t>b._nbytes - 1)

    # -- whole-arena operations ---------------------------------------------

    cdef Py_ssize_t _live(self):
        """Values referring to the arena's chunks: each chunk's references
        beyond the arena's own (its list entry, and self.cur)."""
        cdef Py_ssize_t i, n = 0
        cdef PyObject* o
        for i in range(PyList_GET_SIZE(self.chunks)):
            o = <PyObject*>PyList_GET_ITEM(self.chunks, i)
            n += Py_REFCNT(o) - 1 - (1 if <object>o is self.cur else 0)
        return n

    def stats(self):
        """An ``ArenaStats`` snapshot."""
        if self.heap is None:
            raise ValueError("Arena is not initialised")
        return ArenaStats(bytes_allocated=self.allocated, chunks=len(self.chunks),
                          bytes_mapped=self.mappedTotal, chunks_reused=self.reused,
                          large_values=self.large, live_values=self._live())

    def free(self, *, strict=False):
        """Free everything at once (Go's arena.Free). Idempotent.

        Values still referenced stay valid: their chunk goes back when the
        last of them dies. Afterwards allocation raises ValueError.

        Parameters
        ----------
        strict : bool, optional
            Refuse, with BufferError naming how many values are alive, and
            free nothing, while any value is alive.
        """
        cdef Py_ssize_t n
        if self._freed or self.heap is None:
            return          # freed already, or nothing to free yet
        if strict:
            n = self._live()
            if n:
                raise BufferError(f"{n} value{'s' if n != 1 else ''} of this arena "
                                  f"{'are' if n != 1 else 'is'} still alive")
        self._freed = True
        self.cur = None
        chunks = self.chunks
        self.chunks = []
        del chunks          # chunks nobody else holds go back now

    @property
    def freed(self):
        """True once ``free()`` has run."""
        return self._freed

    def clone(self, x):
        """A copy of an arena value on the default heap (Go's arena.Clone):
        an array, a Block or a ctypes value."""
        heap = default_heap()
        if isinstance(x, np.ndarray):
            out = heap.empty_like(x)
            np.copyto(out, x)
            return out
        if isinstance(x, Block):
            b = heap.alloc(len(x), zero=False)
            memoryview(b)[:] = memoryview(x)
            return b
        if isinstance(x, _CDATA):
            y = heap.new(type(x))
            ctypes.memmove(ctypes.addressof(y), ctypes.addressof(x), ctypes.sizeof(x))
            return y
        raise TypeError(f"cannot clone a {type(x).__name__}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()
        return False

    def __repr__(self):
        if self.heap is None:
            return "<pyarena.Arena not initialised>"
        state = "freed" if self._freed else f"{len(self.chunks)} chunks"
        size = f"{self.chunkSize >> 20} MiB" if self.chunkSize >= (1 << 20) \
            else f"{self.chunkSize >> 10} KiB"
        return f"<pyarena.Arena {state} of {size}>"
