# cython: language_level=3
"""The allocator face: what every pyarena allocator offers Python, written
once (mimalloc's mi_malloc is mi_heap_malloc on the default heap; here
Heap and Arena are two allocators under one face).

Allocator is the base class of Heap and Arena. It has the NumPy face
(zeros, empty, full, zeros_like, empty_like, full_like), raw blocks
(alloc), typed allocation (new, newarray: Go's newobject and newarray) and
owns, all over one primitive each allocator supplies:

    _place(nbytes, align, zero, &placement) -> owner

which puts nbytes somewhere and says who frees them: the heap's own object
(the owner is the Heap: a Block frees its slot when it dies, an array owns
its data through the heap's NEP 49 handler capsule) or a value in an arena
chunk (the owner is the chunk: the value holds it, and nothing is freed
one value at a time). _place returns None when the memory cannot be had;
the face words the MemoryError as NumPy or Go would.

The boundary rule, which keeps hostile arguments from reaching heap state:
every method converts each argument exactly once, into C values (an
arraySpec, a size, an alignment, a count), before it calls _place. Those
conversions are where user code can run (__index__, dtype conversion,
__array__, properties); _place and everything after it makes no call back
into Python until the memory is placed, so nothing can close the heap or
free the arena under it. Buffers and arrays are read through their C
fields (byteRange), never through Python attributes.
"""

cimport cython
from cpython.buffer cimport PyBuffer_FillInfo
from cpython.object cimport PyObject
from cpython.long cimport PyLong_Check
from cpython.exc cimport PyErr_Clear

cdef extern from "Python.h":
    Py_ssize_t PY_SSIZE_T_MAX
    object PyNumber_Index(object o)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1

from libc.stdint cimport uintptr_t
from pyarena._types cimport (mheap, PAGE_SIZE, MAX_ALLOC, ADDR_BITS, PYARENA_TRACE_DOMAIN,
                             PyTraceMalloc_Track, PyTraceMalloc_Untrack)
from pyarena._mcache cimport peekmcache
from pyarena._malloc cimport freeObject
from pyarena._ndarray cimport (arraySpec, arrayLayout, countLayout, likeLayout, byteRange, descrOf,
                               descrCache, theDescrCache, parseOrderFast, PyLong_CheckExact,
                               PyLong_AsSsize_t_unchecked, wrapOwned, wrapArray, allocFailed,
                               checkDeviceLike)

import numpy as np
from pyarena._typed import is_ctypes_type, ctypes_layout

# The dtype cache of _ndarray, read inline by _zeros.
cdef descrCache* DESCR_CACHE = theDescrCache()
cdef object _copyto = np.copyto
cdef object _asarray = np.asarray


@cython.final
@cython.freelist(64)
@cython.no_gc
@cython.binding(False)
cdef class Block:
    """One allocation from a pyarena heap or arena: a writable buffer of
    ``nbytes`` bytes.

    Blocks are made by ``alloc``, never directly. A Block supports the
    buffer protocol (``memoryview(block)``, ``numpy.frombuffer(block)``,
    ``ctypes.c_char.from_buffer(block)``); every such view keeps the Block,
    and so the memory, alive, and sees exactly ``nbytes`` bytes. A heap's
    Block frees its memory when the last reference dies; an arena's keeps
    its chunk alive instead.

    Attributes
    ----------
    address : int
        Address of the first byte.
    nbytes : int
        Size of the buffer in bytes.
    size_class : int
        The size class the memory came from; 0 for a large object, a
        zero-size block or an arena value.
    slot_size : int
        Bytes the allocation occupies: the class's slot size, the large
        object's whole pages, the arena value's own size; 0 for a
        zero-size block.
    heap : Heap
        The heap the memory belongs to (None for a Block made by
        ``Block.__new__``, which is an empty buffer).
    """
    def __cinit__(self):
        self.ptr = 0
        self._nbytes = 0

    def __init__(self, *args, **kwargs):
        # The face makes Blocks through tp_new, which skips __init__.
        raise TypeError("Blocks are made by Heap.alloc or Arena.alloc, not directly")

    def __dealloc__(self):
        if self.ptr != 0 and self._nbytes != 0 and self._owner is None and self.h != NULL:
            # The heap is alive (we hold its Heap) and its mheap too: a heap
            # is unmapped early only when it has no live objects.
            PyTraceMalloc_Untrack(PYARENA_TRACE_DOMAIN, self.ptr)
            freeObject(self.h, self.ptr, self._tiny)

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        PyBuffer_FillInfo(buffer, self, <void*>self.ptr, self._nbytes, 0, flags)

    def __releasebuffer__(self, Py_buffer* buffer):
        pass

    def __len__(self):
        return self._nbytes

    def __reduce__(self):
        raise TypeError("cannot pickle or copy a pyarena.Block: it is one allocation; "
                        "copy its bytes (bytes(block)) or make a new Block")

    # Blocks are not tracked by the cycle collector (no_gc): a Block refers
    # only to its Heap and its chunk, neither of which refers back to a
    # Block, so no cycle can run through one, and tracking would cost every
    # allocation a share of generation-0 collections.

    @property
    def address(self):
        return self.ptr

    @property
    def nbytes(self):
        return self._nbytes

    @property
    def size_class(self):
        return self._sizeclass

    @property
    def slot_size(self):
        return self._slot

    def __repr__(self):
        return (f"<pyarena.Block {self._nbytes} bytes at {self.ptr:#x}, "
                f"class {self._sizeclass} ({self._slot} B slots)>")


# ---------------------------------------------------------------------------
# Argument conversion, once, at the boundary.

cdef int toAlign(object align, size_t* out) except -1:
    """An align argument: None (0: the natural alignment) or an integer
    that is a power of two from 1 to PAGE_SIZE. Read once, as a C value:
    an int subclass's own arithmetic is never asked."""
    cdef int overflow = 0
    cdef long long v
    if align is None:
        out[0] = 0
        return 0
    try:
        align = PyNumber_Index(align)
    except TypeError:
        raise TypeError(f"align must be an int, not {type(align).__name__}") from None
    v = PyLong_AsLongLongAndOverflow(align, &overflow)
    if overflow or v <= 0 or v & (v - 1) or v > PAGE_SIZE:
        raise ValueError(f"align must be a power of two from 1 to {PAGE_SIZE}, "
                         f"got {v if not overflow else 'a value out of range'}")
    out[0] = <size_t>v
    return 0


cdef int toCount(object n, Py_ssize_t* out) except -1:
    """newarray's count, read once: ValueError when negative,
    OverflowError ("allocation size out of range", Go's words) when it
    does not fit a C size."""
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(PyNumber_Index(n), &overflow)
    if overflow < 0 or (overflow == 0 and v < 0):
        raise ValueError(f"negative count: {v if overflow == 0 else 'below -2**63'}")
    if overflow > 0:
        raise OverflowError("allocation size out of range")
    out[0] = <Py_ssize_t>v
    return 0


cdef int checkArrayBytes(size_t size, Py_ssize_t n, size_t* total) except -1:
    """n * size for newarray, checked as Go's newarray checks it, before any
    memory is touched: past size_t an OverflowError, past the address
    space a MemoryError, both "allocation size out of range"."""
    if size and <size_t>n > (<size_t>-1) // size:
        raise OverflowError("allocation size out of range")
    total[0] = <size_t>n * size
    if total[0] > MAX_ALLOC:
        raise MemoryError("allocation size out of range")
    return 0


cdef inline size_t typedAlign(size_t align) noexcept:
    if align < 1:
        return 1
    return align if align < PAGE_SIZE else PAGE_SIZE


cdef object blockMemoryError(size_t nbytes):
    if nbytes > MAX_ALLOC:
        return MemoryError(f"allocation size out of range: {nbytes} bytes")
    return MemoryError(f"cannot allocate {nbytes} bytes: out of memory or address space")


@cython.binding(False)
cdef class Allocator:
    """The allocation methods every pyarena allocator has: ``Heap`` and
    ``Arena`` are allocators. Not made directly.

    Each method converts its arguments once, then takes the memory from
    the allocator: a heap's own slots and spans, or an arena's chunks.
    """

    def __cinit__(self):
        self._capi = NULL
        self._capsule = None

    def __reduce__(self):
        raise TypeError(f"cannot pickle or copy a pyarena.{type(self).__name__}: it owns "
                        "mapped memory")

    # -- what each allocator supplies -----------------------------------------

    cdef object _place(self, size_t nbytes, size_t align, bint zero, placement* pl):
        raise TypeError(f"{type(self).__name__} is not an allocator")

    cdef bint _ownsRange(self, uintptr_t lo, uintptr_t hi) except -1:
        return False

    cdef bint _ownsBlock(self, Block b) except -1:
        return False

    cdef bint _ownsEmpty(self, object obj) except -1:
        return False

    # -- the face, over _place ------------------------------------------------

    @cython.final
    cdef object _newArray(self, object descr, arraySpec* spec, bint fortran, bint zero):
        cdef placement pl
        owner = self._place(<size_t>spec.nbytes, spec.align, zero, &pl)
        if owner is None:
            raise allocFailed(spec.nd, spec.dims, descr, spec.nbytes)
        if pl.chunked:
            return wrapArray(descr, spec.nd, spec.dims, <void*>pl.addr, fortran, owner,
                             spec.stridesp)
        return wrapOwned(descr, spec.nd, spec.dims, spec.stridesp, <void*>pl.addr, fortran,
                         (<Allocator>owner)._capsule, <size_t>spec.nbytes)

    @cython.final
    cdef Block _newBlock(self, size_t nbytes, size_t align, bint zero):
        cdef placement pl
        # The Block first: if making it fails, nothing is placed yet.
        cdef Block b = Block.__new__(Block)
        owner = self._place(nbytes, align, zero, &pl)
        if owner is None:
            raise blockMemoryError(nbytes)
        b.heap = <object>pl.heap
        b.h = pl.h
        b.ptr = pl.addr
        b._nbytes = <Py_ssize_t>nbytes
        b._slot = pl.slot
        b._sizeclass = pl.sizeclass
        b._tiny = pl.tiny
        if pl.chunked:
            b._owner = owner        # the chunk is tracked, not its values
        elif nbytes:
            PyTraceMalloc_Track(PYARENA_TRACE_DOMAIN, pl.addr, nbytes)
        return b

    @cython.final
    cdef object _newCtypes(self, object t, size_t size, size_t align):
        # from_buffer: the value holds a view of the Block, so the memory
        # lives as long as the value, and copy and pickle treat it as any
        # ctypes value. The view sees the value's bytes, no more.
        return t.from_buffer(self._newBlock(size, typedAlign(align), True))

    @cython.final
    cdef object _zeros(self, object shape, object dtype, object order, bint zero):
        """zeros/empty: the commonest call, an int shape with the dtype of
        the call before, is read inline."""
        cdef arraySpec spec
        cdef Py_ssize_t n
        cdef descrCache* dc = DESCR_CACHE
        cdef bint fortran = parseOrderFast(order)
        descr = None
        if <PyObject*>dtype == dc.key and not dc.hassub and PyLong_CheckExact(shape):
            n = PyLong_AsSsize_t_unchecked(shape)
            if n >= 0 and (dc.itemsize == 0 or n <= PY_SSIZE_T_MAX // dc.itemsize):
                descr = <object>dc.descr
                spec.nd = 1
                spec.dims[0] = n
                spec.nbytes = n * dc.itemsize
                spec.align = dc.align
                spec.stridesp = NULL
            elif n == -1:
                PyErr_Clear()
        if descr is None:
            descr = arrayLayout(shape, dtype, &spec)
        return self._newArray(descr, &spec, fortran, zero)

    def alloc(self, Py_ssize_t nbytes, *, bint zero=True, align=None):
        """Allocate ``nbytes`` bytes.

        Parameters
        ----------
        nbytes : int
            Size in bytes, >= 0. ``0`` gives a zero-length block at the one
            address all zero-size allocations share (Go's zerobase).
        zero : bool, optional
            Whether the memory must read as zero (default). Memory that is
            known to be zero already (fresh or released pages, slots never
            used) is not cleared again either way. Arena memory always
            reads as zero.
        align : int, optional
            Alignment of the address, a power of two up to ``PAGE_SIZE``.
            Without it the address has the size class's natural alignment,
            and at least 16 for ``nbytes >= 16``.

        Returns
        -------
        Block

        Raises
        ------
        ValueError
            Negative ``nbytes``, a bad ``align``, or a closed heap (freed
            arena).
        TypeError
            ``nbytes`` or ``align`` not an integer.
        OverflowError
            ``nbytes`` too large for a C size.
        MemoryError
            The memory cannot be mapped.
        """
        cdef size_t a
        toAlign(align, &a)
        if nbytes < 0:
            raise ValueError(f"negative size: {nbytes}")
        return self._newBlock(<size_t>nbytes, a, zero)

    def zeros(self, shape, dtype=float, order="C", *, device=None, like=None):
        """A new array of zeros whose memory comes from this allocator
        (``numpy.zeros``).

        Parameters
        ----------
        shape : int or sequence of ints
            Shape of the array; 0-sized dimensions are allowed.
        dtype : data-type, optional
            Anything ``numpy.dtype`` accepts that holds no Python object
            references (structured, sub-array, datetime, complex, ...).
            Default ``float``.
        order : {'C', 'F'}, optional
            Row-major (C) or column-major (Fortran) layout.
        device : {'cpu', None}, optional
            NumPy 2's keyword: the CPU is the only device.
        like : None
            NumPy's dispatch keyword: not supported (``TypeError``).

        Returns
        -------
        numpy.ndarray
            A plain, writable ndarray, aligned for its dtype and to at least
            16 bytes. A heap's array owns its memory (``flags.owndata``)
            through the heap's NumPy memory handler: NumPy gives the memory
            back when the array and every view of it are gone. An arena's
            array has its chunk as ``base``.

        Raises
        ------
        TypeError
            An object dtype, or a shape that is not integers.
        ValueError
            Negative dimensions, a size that overflows, a bad order, or a
            closed heap (freed arena).
        MemoryError
            The memory cannot be mapped.

        See Also
        --------
        numpy.zeros, empty, full, zeros_like
        """
        if device is not None or like is not None:
            checkDeviceLike(device, like)
        return self._zeros(shape, dtype, order, True)

    def empty(self, shape, dtype=float, order="C", *, device=None, like=None):
        """A new array without initialising its entries (``numpy.empty``).

        Same parameters as ``zeros``. Memory that is known to be zero (fresh
        from the OS, or never used) is returned as it is; reused memory
        holds whatever was there. Arena memory always reads as zero.
        """
        if device is not None or like is not None:
            checkDeviceLike(device, like)
        return self._zeros(shape, dtype, order, False)

    def full(self, shape, fill_value, dtype=None, order="C", *, device=None, like=None):
        """A new array filled with ``fill_value`` (``numpy.full``).

        ``dtype=None`` takes the dtype of ``numpy.asarray(fill_value)``;
        ``fill_value`` is converted once either way, as NumPy does.
        """
        if device is not None or like is not None:
            checkDeviceLike(device, like)
        if dtype is None:
            fill_value = _asarray(fill_value)
            dtype = fill_value.dtype
        a = self._zeros(shape, dtype, order, False)
        _copyto(a, fill_value, casting="unsafe")
        return a

    def zeros_like(self, a, dtype=None, order="K", subok=True, shape=None, *, device=None):
        """An array of zeros with the shape and type of ``a``
        (``numpy.zeros_like``), its memory from this allocator.

        ``order='K'`` (and ``None``) keeps ``a``'s memory layout, 'A' is 'F'
        when ``a`` is Fortran-contiguous, else 'C'. ``subok`` is accepted for
        NumPy's signature; the result is always a plain ndarray, since a
        subclass could not be guaranteed to keep the memory.
        """
        cdef arraySpec spec
        cdef bint fortran
        if device is not None:
            checkDeviceLike(device, None)
        descr = likeLayout(a, dtype, order, shape, &spec, &fortran)
        return self._newArray(descr, &spec, fortran, True)

    def empty_like(self, a, dtype=None, order="K", subok=True, shape=None, *, device=None):
        """``zeros_like`` without initialising the entries
        (``numpy.empty_like``)."""
        cdef arraySpec spec
        cdef bint fortran
        if device is not None:
            checkDeviceLike(device, None)
        descr = likeLayout(a, dtype, order, shape, &spec, &fortran)
        return self._newArray(descr, &spec, fortran, False)

    def full_like(self, a, fill_value, dtype=None, order="K", subok=True, shape=None, *,
                  device=None):
        """An array like ``a`` filled with ``fill_value``
        (``numpy.full_like``)."""
        cdef arraySpec spec
        cdef bint fortran
        if device is not None:
            checkDeviceLike(device, None)
        descr = likeLayout(a, dtype, order, shape, &spec, &fortran)
        out = self._newArray(descr, &spec, fortran, False)
        _copyto(out, fill_value, casting="unsafe")
        return out

    def new(self, t):
        """One zeroed value of type ``t`` (Go's newobject).

        Parameters
        ----------
        t : data-type or ctypes type
            A NumPy dtype, or anything ``numpy.dtype`` accepts (structured
            dtypes with nested fields and sub-arrays included); or a ctypes
            type: a simple type, a ``Structure`` or ``Union`` subclass, an
            array type, a pointer type.

        Returns
        -------
        numpy.ndarray or ctypes instance
            For a dtype, a 0-d array (``p['x'] = 1.5`` sets a field of a
            struct); for a ctypes type, an instance of it whose memory lies
            in this allocator (``p.x = 1.5``), kept alive as long as the
            instance. Aligned as the type asks (``dtype.alignment``,
            ``ctypes.alignment``). A zero-size type gets the zero-size
            address.

        Raises
        ------
        TypeError
            A type that holds Python object references (dtype object,
            ``ctypes.py_object``, structures containing them).
        """
        cdef arraySpec spec
        if is_ctypes_type(t):
            size, align = ctypes_layout(t)
            return self._newCtypes(t, size, align)
        descr = countLayout(t, -1, &spec)
        return self._newArray(descr, &spec, False, True)

    def newarray(self, t, n):
        """``n`` zeroed values of type ``t`` (Go's newarray).

        Returns a 1-d array for a dtype, an instance of the ctypes array
        type ``t * n`` for a ctypes type. ``n == 0`` is allowed. ``n < 0``
        raises ValueError; ``n * sizeof(t)`` past size_t raises
        OverflowError, past the address space MemoryError, both with Go's
        message "allocation size out of range", before any memory is
        touched. ``n`` is read once. See ``new`` for the types accepted.
        """
        cdef arraySpec spec
        cdef Py_ssize_t count, itemsize
        cdef size_t total, align
        cdef bint hassub
        if is_ctypes_type(t):
            csize, calign = ctypes_layout(t)
            toCount(n, &count)
            checkArrayBytes(csize, count, &total)
            return self._newCtypes(t * count, total, calign)
        descr = descrOf(t, &itemsize, &align, &hassub)     # t converted once
        toCount(n, &count)
        checkArrayBytes(<size_t>itemsize, count, &total)
        descr = countLayout(descr, count, &spec)
        return self._newArray(descr, &spec, False, True)

    def owns(self, obj):
        """Whether ``obj`` lies in this allocator's live memory.

        Parameters
        ----------
        obj : int, Block or buffer
            An address; a Block (True when it came from this allocator); or
            any object exporting a buffer, such as a memoryview, a NumPy
            array or a ctypes value, whose bytes must all lie in one live
            allocation of a heap, or in one chunk of an arena. A
            zero-length buffer is judged by the object behind it (``.base``
            of an array, the exporter of a memoryview): a heap's array or a
            Block of it.

        Returns
        -------
        bool

        Raises
        ------
        TypeError
            ``obj`` is none of these.

        Notes
        -----
        A tiny block counts as live as a whole while any value carved from
        it is alive.
        """
        cdef uintptr_t lo, hi
        cdef long long v
        cdef int overflow = 0
        if isinstance(obj, Block):
            return self._ownsBlock(<Block>obj)
        if PyLong_Check(obj):
            v = PyLong_AsLongLongAndOverflow(obj, &overflow)
            if overflow or v < 0 or v >> ADDR_BITS:
                return False
            return self._ownsRange(<uintptr_t>v, <uintptr_t>v)
        if byteRange(obj, &lo, &hi) == 0:
            return self._ownsEmpty(obj)
        return self._ownsRange(lo, hi)
