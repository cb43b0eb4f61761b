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

Lifetime. Every value holds a reference to its chunk: an array's base is
the chunk, a ctypes value holds a view of it, a Block names it as owner.
Arena.free() drops the arena's own references: a chunk nobody else holds
goes back at once, a chunk with values still alive goes back when the last
of them dies, so Python never sees memory that was reused. free(strict=True)
instead refuses (BufferError) while any value is alive. Given-back chunks
wait in a small pool on the heap and are reused by later arenas without
new mappings; Arena.stats() counts those reuses.
"""

cimport cython
from cpython.buffer cimport PyBuffer_FillInfo
from cpython.object cimport PyObject
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from libc.stdint cimport uint64_t, uintptr_t
from libc.string cimport memset
from pyarena._types cimport mspan, PAGE_SIZE, PAGE_SHIFT
from pyarena._heap cimport Heap, Block, checkAlign
from pyarena._malloc cimport mallocLarge, freeObject, zerobaseAddr
from pyarena._mheap cimport nextDirtyPage, nextCleanPage
from pyarena._ndarray cimport arraySpec, arrayLayout, wrapArray, checkDeviceLike

import ctypes
from dataclasses import dataclass

import numpy as np
from numpy.lib.array_utils import byte_bounds

from pyarena._heap import default_heap
from pyarena._ndarray import like_layout
from pyarena._typed import is_ctypes_type, ctypes_layout, array_bytes, dtype_itemsize

cdef extern from "Python.h":
    Py_ssize_t Py_REFCNT(PyObject* o)

cdef uintptr_t ZEROBASE = zerobaseAddr()
# The base class of every ctypes instance (not exported by name).
_CDATA = next(c for c in ctypes.c_int.__mro__ if c.__name__ == "_CData")
cdef enum:
    POOL_MAX = 4


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
cdef class _Chunk:
    """One arena chunk: a large span of the heap, and Go's linearAlloc over
    it. Its memory goes back to the heap when this object dies."""
    cdef Heap heap
    cdef mspan* span
    cdef uintptr_t base, next, mapped, end
    # Below dirtyEnd the pages may hold data from an earlier arena; above it
    # the span's scav bits say which pages read as zero.
    cdef uintptr_t dirtyEnd

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        # For ctypes' from_buffer: the whole chunk, writable.
        PyBuffer_FillInfo(buffer, self, <void*>self.base, self.end - self.base, 0, flags)

    def __releasebuffer__(self, Py_buffer* buffer):
        pass

    def __dealloc__(self):
        cdef Heap heap = self.heap
        if self.span == NULL or heap is None or heap.h == NULL:
            return
        if heap._npool < POOL_MAX and not heap._closed:
            heap._chunkPool[heap._npool] = self.span
            heap._chunkDirty[heap._npool] = self.mapped if self.mapped > self.dirtyEnd \
                else self.dirtyEnd
            heap._npool += 1
        else:
            freeObject(heap.h, heap._peekCache(), self.base, False)
        self.span = NULL

    cdef int prepare(self, uintptr_t upto) except -1:
        """Make [mapped, upto) ready: clear what may hold old data (Go:
        linearAlloc maps on demand, a physical page at a time)."""
        cdef uintptr_t a, b, stop
        upto = (upto + PAGE_SIZE - 1) & ~(<uintptr_t>PAGE_SIZE - 1)
        if upto > self.end:
            upto = self.end
        a = self.mapped
        if upto <= a:
            return 0
        # Cleared with the GIL held (at most a quarter chunk at a time):
        # releasing it would let another thread bump-allocate from this
        # chunk, inside the range being cleared.
        if a < self.dirtyEnd:
            stop = upto if upto < self.dirtyEnd else self.dirtyEnd
            memset(<void*>a, 0, stop - a)
            a = stop
        while a < upto:
            a = nextDirtyPage(self.heap.h, a, upto)
            if a >= upto:
                break
            b = nextCleanPage(self.heap.h, a, upto)
            memset(<void*>a, 0, b - a)
            a = b
        self.mapped = upto
        return 0


cdef class Arena:
    """A region for values that die together: bump allocation in chunks
    taken from a heap, everything freed at once (Go's arena experiment).

    Parameters
    ----------
    chunk_size : int, optional
        Bytes per chunk, a multiple of ``PAGE_SIZE`` (default 8 MiB, Go's
        userArenaChunkBytes). Values larger than a quarter chunk are
        allocated on the heap.
    heap : Heap, optional
        The heap that supplies chunks; the default heap if omitted.

    Notes
    -----
    It has the Heap's allocation methods (``alloc``, ``zeros``, ``empty``,
    ``full``, ``zeros_like``, ``empty_like``, ``full_like``, ``new``,
    ``newarray``); every value reads as zero. ``free()`` gives it all back;
    values still referenced stay valid until they die. ``with Arena() as
    a:`` frees on exit, also when the block raises.
    """
    cdef Heap heap
    cdef size_t chunkSize
    cdef list chunks
    cdef _Chunk cur
    cdef bint freed
    cdef uint64_t allocated, mappedTotal, reused, large

    def __init__(self, chunk_size=8 << 20, heap=None):
        chunk_size = int(chunk_size)
        if chunk_size < PAGE_SIZE or chunk_size % PAGE_SIZE or chunk_size > (1 << 36):
            raise ValueError(f"chunk_size must be a multiple of {PAGE_SIZE} up to 64 GiB, "
                             f"got {chunk_size}")
        if heap is not None and not isinstance(heap, Heap):
            raise TypeError(f"heap must be a pyarena.Heap, not {type(heap).__name__}")
        self.heap = heap if heap is not None else default_heap()
        self.chunkSize = chunk_size
        self.chunks = []
        self.cur = None
        self.freed = False

    cdef _Chunk _newChunk(self):
        cdef Heap heap = self.heap
        cdef _Chunk ch = _Chunk.__new__(_Chunk)
        cdef mspan* s = NULL
        cdef uintptr_t dirty = 0
        cdef int i
        if heap.h == NULL or heap._closed:
            raise ValueError("the arena's heap is closed")
        for i in range(heap._npool - 1, -1, -1):
            if heap._chunkPool[i].npages << PAGE_SHIFT == self.chunkSize:
                s = heap._chunkPool[i]
                dirty = heap._chunkDirty[i]
                heap._npool -= 1
                heap._chunkPool[i] = heap._chunkPool[heap._npool]
                heap._chunkDirty[i] = heap._chunkDirty[heap._npool]
                self.reused += 1
                break
        if s == NULL:
            s = mallocLarge(heap._cache(), self.chunkSize >> PAGE_SHIFT)
            if s == NULL:
                raise MemoryError(f"cannot allocate an arena chunk of {self.chunkSize} bytes")
            # A fresh span's scav bits say which pages read as zero; a large
            # spare's pages are all dirty.
            dirty = s.startAddr + self.chunkSize if s.freshindex else s.startAddr
        ch.heap = heap
        ch.span = s
        ch.base = ch.next = ch.mapped = s.startAddr
        ch.end = s.startAddr + self.chunkSize
        ch.dirtyEnd = dirty
        self.chunks.append(ch)
        self.cur = ch
        return ch

    cdef uintptr_t _linearAlloc(self, size_t size, size_t align) except? 0:
        """size bytes aligned to align from the current chunk (a new one
        when it is full), ready and zero; Go's linearAlloc.alloc. The chunk
        used is self.cur afterwards."""
        cdef _Chunk ch = self.cur
        cdef uintptr_t p
        if self.freed:
            raise ValueError("allocation from a freed arena")
        if align < 8:
            align = 8
        if ch is not None:
            p = (ch.next + align - 1) & ~(<uintptr_t>align - 1)
        if ch is None or p + size > ch.end:
            ch = self._newChunk()
            p = (ch.next + align - 1) & ~(<uintptr_t>align - 1)
        ch.next = p + size
        if ch.next > ch.mapped:
            before = ch.mapped
            ch.prepare(ch.next)
            self.mappedTotal += ch.mapped - before
        self.allocated += size
        return p

    cdef bint _isLarge(self, size_t nbytes):
        return nbytes > self.chunkSize // 4

    cdef _Chunk _place(self, size_t nbytes, size_t align, uintptr_t* p):
        p[0] = self._linearAlloc(nbytes, align)
        return self.cur

    # -- the allocation methods ---------------------------------------------

    def alloc(self, Py_ssize_t nbytes, *, bint zero=True, align=None):
        """A Block of ``nbytes`` from the arena (see ``Heap.alloc``); always
        zeroed, whatever ``zero`` says. Its memory stays valid while the
        Block lives."""
        cdef uintptr_t p
        cdef size_t a = 16 if nbytes >= 16 else 8
        if nbytes < 0:
            raise ValueError(f"negative size: {nbytes}")
        if self.freed:
            raise ValueError("allocation from a freed arena")
        if align is not None:
            a = checkAlign(align)
        if nbytes == 0 or self._isLarge(nbytes):
            if nbytes:
                self.large += 1
            return self.heap.alloc(nbytes, zero=True, align=align)
        ch = self._place(nbytes, a, &p)
        b = Block.__new__(Block)
        (<Block>b).heap = self.heap
        (<Block>b)._owner = ch
        (<Block>b).ptr = p
        (<Block>b)._nbytes = nbytes
        (<Block>b)._slot = nbytes
        (<Block>b)._sizeclass = 0
        return b

    cdef object _arrayIn(self, object shape, object dtype, bint fortran, object perm):
        cdef arraySpec spec
        cdef uintptr_t p
        descr = arrayLayout(shape, dtype, perm, &spec)
        if self.freed:
            raise ValueError("allocation from a freed arena")
        if spec.nbytes == 0:
            return wrapArray(descr, spec.nd, spec.dims, <void*>ZEROBASE, fortran, None) \
                if spec.stridesp == NULL else self.heap._arrayIn(shape, dtype, fortran, perm, True)
        if self._isLarge(spec.nbytes):
            self.large += 1
            return self.heap._arrayIn(shape, dtype, fortran, perm, True)
        ch = self._place(spec.nbytes, spec.align, &p)
        return wrapArray(descr, spec.nd, spec.dims, <void*>p, fortran, ch, spec.stridesp)

    def zeros(self, shape, dtype=float, order="C", *, device=None, like=None):
        """``numpy.zeros`` in the arena (see ``Heap.zeros``)."""
        checkDeviceLike(device, like)
        return self._arrayIn(shape, dtype, _fortran(order), None)

    def empty(self, shape, dtype=float, order="C", *, device=None, like=None):
        """``numpy.empty`` in the arena: arena memory always reads as zero."""
        checkDeviceLike(device, like)
        return self._arrayIn(shape, dtype, _fortran(order), None)

    def full(self, shape, fill_value, dtype=None, order="C", *, device=None, like=None):
        """``numpy.full`` in the arena."""
        checkDeviceLike(device, like)
        if dtype is None:
            dtype = np.array(fill_value).dtype
        a = self._arrayIn(shape, dtype, _fortran(order), None)
        np.copyto(a, fill_value, casting="unsafe")
        return a

    def zeros_like(self, a, dtype=None, order="K", subok=True, shape=None, *, device=None):
        """``numpy.zeros_like`` in the arena."""
        checkDeviceLike(device, None)
        a, shape, dtype, fortran, perm = like_layout(a, dtype, order, shape)
        return self._arrayIn(shape, dtype, fortran, perm)

    def empty_like(self, a, dtype=None, order="K", subok=True, shape=None, *, device=None):
        """``numpy.empty_like`` in the arena (reads as zero)."""
        return self.zeros_like(a, dtype, order, subok, shape)

    def full_like(self, a, fill_value, dtype=None, order="K", subok=True, shape=None, *,
                  device=None):
        """``numpy.full_like`` in the arena."""
        out = self.zeros_like(a, dtype, order, subok, shape)
        np.copyto(out, fill_value, casting="unsafe")
        return out

    def new(self, t):
        """One zeroed value of type ``t`` in the arena (see ``Heap.new``)."""
        if is_ctypes_type(t):
            size, align = ctypes_layout(t)
            return self._ctypesValue(t, size, align)
        return self._arrayIn((), t, False, None)

    def newarray(self, t, n):
        """``n`` zeroed values of type ``t`` in the arena (see
        ``Heap.newarray``)."""
        if is_ctypes_type(t):
            size, align = ctypes_layout(t)
            total = array_bytes(size, n)
            return self._ctypesValue(t * n, total, align)
        array_bytes(dtype_itemsize(t), n)
        return self._arrayIn((n,), t, False, None)

    cdef object _ctypesValue(self, object t, size_t size, size_t align):
        cdef uintptr_t p
        if self.freed:
            raise ValueError("allocation from a freed arena")
        if size == 0 or self._isLarge(size):
            if size:
                self.large += 1
            return self.heap.new(t)
        ch = self._place(size, align, &p)
        return t.from_buffer(ch, p - ch.base)

    # -- whole-arena operations ---------------------------------------------

    def owns(self, obj):
        """Whether ``obj`` (an address, a Block, an array, any buffer) lies
        in one of this arena's chunks. Values larger than a quarter chunk
        live on the heap and are not the arena's."""
        if isinstance(obj, _CDATA):
            lo = ctypes.addressof(obj)
            hi = lo + max(ctypes.sizeof(obj), 1) - 1
        elif isinstance(obj, int):
            lo = hi = obj
        elif isinstance(obj, Block):
            lo = (<Block>obj).ptr
            hi = lo + max((<Block>obj)._nbytes, 1) - 1
        else:
            a = np.asarray(obj) if not isinstance(obj, np.ndarray) else obj
            if a.nbytes == 0:
                return False
            lo, hi = byte_bounds(a)
            hi -= 1
        for ch in self.chunks:
            if (<_Chunk>ch).base <= lo and hi < (<_Chunk>ch).next:
                return True
        return False

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
        if self.freed:
            return
        if strict:
            n = self._live()
            if n:
                raise BufferError(f"{n} value{'s' if n != 1 else ''} of this arena "
                                  f"{'are' if n != 1 else 'is'} still alive")
        self.freed = True
        self.cur = None
        self.chunks = []

    @property
    def freed(self):
        """True once ``free()`` has run."""
        return self.freed

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
        state = "freed" if self.freed else f"{len(self.chunks)} chunks"
        size = f"{self.chunkSize >> 20} MiB" if self.chunkSize >= (1 << 20) \
            else f"{self.chunkSize >> 10} KiB"
        return f"<pyarena.Arena {state} of {size}>"


cdef bint _fortran(object order) except -1:
    if order is None or order == "C" or order == "c":
        return False
    if order == "F" or order == "f":
        return True
    raise ValueError(f"order must be one of 'C' or 'F' (got {order!r})")
