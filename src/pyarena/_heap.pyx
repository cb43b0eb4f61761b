# cython: language_level=3
"""The Python face of the allocator: Heap, Block and the default heap.

A Heap owns one mheap (see _malloc.pyx for how allocation works). A Block is
one allocation: a writable buffer of exactly nbytes bytes. Reference
counting is the collector: a Block frees its slot when its last reference
dies, and anything that can still see the memory (a memoryview, a NumPy
array made with numpy.frombuffer, a ctypes object from_buffer) holds a
reference to the Block, so memory Python can reach is never reused. Every
Block holds a reference to its Heap, so a heap's mappings outlive its
blocks: close() stops allocation, and the memory is unmapped when the heap
object itself dies, after the last block.

Per-thread caches come from _mcache (getmcacheSlow), found through a
thread-local table keyed by the heap's serial that this module keeps in
front of it, so that the hot paths make no call to find them: a load and
a compare. The table forgets a thread's entries when its caches go back.

The C-level API (malloc, calloc, realloc, free, usable_size: cdef methods,
declared in __init__.pxd for cimport) runs without the GIL from any number
of threads; see "Locking" in _types.pxd.
"""

cimport cython
from cpython.buffer cimport PyBuffer_FillInfo, PyObject_GetBuffer, PyBuffer_Release
from cpython.buffer cimport PyBUF_RECORDS_RO
from cpython.object cimport PyObject
from cpython.exc cimport PyErr_Clear

cdef extern from "Python.h":
    Py_ssize_t PY_SSIZE_T_MAX
from libc.stdint cimport uint64_t, uintptr_t
from libc.string cimport memcpy, strncpy
from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer, PyCapsule_Destructor
from cpython.mem cimport PyMem_RawCalloc, PyMem_RawFree
from pyarena._types cimport (mheap, mcache, mspan, PAGE_SHIFT, PAGE_SIZE, MAX_SMALL_SIZE,
                             TINY_SIZE, NUM_SIZE_CLASSES,
                             pyarena_class_to_size, ADDR_BITS, MAX_ALLOC, pa_add64, pa_load64, pa_lock,
                             pa_unlock)
from pyarena._mheap cimport mheap_new, mheap_unref, scavengeAll
from pyarena._mcache cimport getmcacheSlow, dropLargeSpare, releaseThreadCaches, onThreadCachesReleased

cdef extern from *:
    """
    /* The hot paths' own copy of the per-thread lookup table (heap serial
       -> mcache), so that finding the calling thread's cache costs a load
       and a compare, not a call into _mcache. Misses go to _mcache's
       getmcacheSlow, which owns the caches and their thread-exit cleanup.
       An entry can only go stale with its heap (serials are never reused)
       or its thread (the table dies with it). */
    #define PYARENA_HTLS_WAYS 8
    static __thread __attribute__((tls_model("initial-exec")))
        unsigned long long pyarena_htls_serial[PYARENA_HTLS_WAYS];
    static __thread __attribute__((tls_model("initial-exec")))
        void *pyarena_htls_cache[PYARENA_HTLS_WAYS];
    static inline void *pyarena_htls_get(unsigned long long serial) {
        unsigned int k = (unsigned int)(serial & (PYARENA_HTLS_WAYS - 1));
        return pyarena_htls_serial[k] == serial ? pyarena_htls_cache[k] : 0;
    }
    static inline void pyarena_htls_set(unsigned long long serial, void *c) {
        unsigned int k = (unsigned int)(serial & (PYARENA_HTLS_WAYS - 1));
        pyarena_htls_serial[k] = serial;
        pyarena_htls_cache[k] = c;
    }
    static void pyarena_htls_clear(void) {
        for (unsigned int k = 0; k < PYARENA_HTLS_WAYS; k++) {
            pyarena_htls_serial[k] = 0;
            pyarena_htls_cache[k] = 0;
        }
    }
    /* Set once this Python thread has its end hook (_ThreadEnd). */
    static __thread __attribute__((tls_model("initial-exec"))) int pyarena_thread_hooked;
    """
    void* htls_get "pyarena_htls_get"(unsigned long long serial) noexcept nogil
    void htls_set "pyarena_htls_set"(unsigned long long serial, void* c) noexcept nogil
    void htls_clear "pyarena_htls_clear"() noexcept nogil
    int thread_hooked "pyarena_thread_hooked"


import threading

onThreadCachesReleased(htls_clear)


@cython.final
cdef class _ThreadEnd:
    """Lives in a threading.local: Python drops it when the thread's state
    is cleared, which is before join() returns (the pthread key destructor
    comes later), so a joined thread has already given its caches back."""

    def __dealloc__(self):
        releaseThreadCaches()


_threadEnd = threading.local()


cdef int hookThreadEnd() except -1:
    global thread_hooked
    if not thread_hooked:
        thread_hooked = 1
        _threadEnd.hook = _ThreadEnd()
    return 0


cdef inline mcache* getmcache(mheap* h) noexcept nogil:
    """The calling thread's cache of h, made on first use; NULL without
    memory."""
    cdef mcache* c = <mcache*>htls_get(h.serial)
    if c != NULL:
        return c
    c = getmcacheSlow(h)
    if c != NULL:
        htls_set(h.serial, c)
    return c


cdef inline mcache* peekmcache(mheap* h) noexcept nogil:
    """The calling thread's cache of h if the table has it, else NULL."""
    return <mcache*>htls_get(h.serial)
from pyarena._mcentral cimport releaseSpares
from pyarena._malloc cimport (zerobaseAddr, mallocgc, freeObject,
                              clearLarge, clearLargeNogil, liveObject, FREE_OK,
                              FREE_NOT_IN_HEAP, FREE_NOT_OBJECT_START, FREE_NOT_ALLOCATED)
from pyarena._ndarray cimport (arraySpec, arrayLayout, descrCache, theDescrCache, parseOrderFast,
                               PyLong_CheckExact, PyLong_AsSsize_t_unchecked, wrapOwned,
                               allocFailed, PyDataMem_Handler, arrayHandler, checkDeviceLike)
from pyarena._mstats import MemStats, SizeClassStats
import operator
import warnings
from pyarena._ndarray import like_layout
from pyarena._typed import is_ctypes_type, ctypes_layout, array_bytes, dtype_itemsize
import numpy as np
from numpy.lib.array_utils import byte_bounds


# The dtype cache of _ndarray, read inline by _arrayIn.
cdef descrCache* DESCR_CACHE = theDescrCache()

# The zero-size address (_malloc.zerobase), read once: the free paths
# compare every pointer with it.
cdef uintptr_t ZEROBASE = zerobaseAddr()


@cython.final
@cython.freelist(64)
@cython.no_gc
cdef class Block:
    """One allocation from a pyarena heap: a writable buffer of ``nbytes``
    bytes.

    Blocks are made by ``Heap.alloc``, never directly. A Block supports the
    buffer protocol (``memoryview(block)``, ``numpy.frombuffer(block)``,
    ``ctypes.c_char.from_buffer(block)``); every such view keeps the Block,
    and so the memory, alive. The memory is freed when the last reference
    dies.

    Attributes
    ----------
    address : int
        Address of the first byte.
    nbytes : int
        Size of the buffer in bytes.
    size_class : int
        The size class the memory came from; 0 for a large object (or a
        zero-size block).
    slot_size : int
        Bytes the allocation occupies: the class's slot size, or the large
        object's whole pages; 0 for a zero-size block.
    heap : Heap
        The heap the memory belongs to.
    """
    def __cinit__(self):
        self.ptr = 0

    def __init__(self, *args, **kwargs):
        # Heap.alloc makes Blocks through tp_new, which skips __init__.
        raise TypeError("Blocks are made by Heap.alloc, not directly")

    def __dealloc__(self):
        if self.ptr != 0 and self._nbytes != 0 and self.heap is not None and self._owner is None:
            # The heap is alive (we hold it) and its mheap too: a heap is
            # destroyed early only when it has no live objects.
            freeObject(self.heap.h, self.heap._peekCache(), self.ptr, self._tiny)

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        PyBuffer_FillInfo(buffer, self, <void*>self.ptr, self._nbytes, 0, flags)

    def __releasebuffer__(self, Py_buffer* buffer):
        pass

    def __len__(self):
        return self._nbytes

    # Blocks are not tracked by the cycle collector (no_gc): a Block refers
    # only to its Heap, which never refers back to a Block, so no cycle can
    # run through one, and tracking would cost every allocation a share of
    # generation-0 collections.

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


cdef inline Block newBlock(Heap heap, uintptr_t p, Py_ssize_t nbytes, int sizeclass,
                           size_t slot, bint tiny):
    cdef Block b = Block.__new__(Block)
    b.heap = heap
    b.ptr = p
    b._nbytes = nbytes
    b._sizeclass = sizeclass
    b._slot = slot
    b._tiny = tiny
    return b


cdef class Heap:
    """A heap of its own: Go's allocator over memory mapped for it alone.

    Use ``default_heap()`` for the process-wide heap; make a ``Heap()`` to
    keep a workload's memory apart (its statistics, its release, its
    lifetime). A heap is a context manager: ``with Heap() as h:`` closes it
    on exit.

    Notes
    -----
    Any number of threads may allocate and free at once, with or without
    the GIL (see the C-level API in ``pyarena/__init__.pxd``). Closing a
    heap stops allocation, also through its NumPy handler; blocks and
    arrays still alive stay valid, and the heap's memory is unmapped when
    the last of them (and the heap object) is gone.
    """

    def __cinit__(self):
        self.h = mheap_new()
        if self.h == NULL:
            raise MemoryError("cannot map memory for a new heap")
        self._closed = False
        self._final = None
        self._capsule = None

    def __dealloc__(self):
        self._destroy()

    cdef void _destroy(self):
        """Let go of the mheap: drop the NumPy allocator capsule and this
        object's reference. Arrays that own heap memory hold the capsule
        and so keep the mheap mapped until they die; the per-thread caches
        go with the mheap."""
        cdef mheap* h = self.h
        if h == NULL:
            return
        self._dropChunkPool()
        self.h = NULL
        self._capsule = None
        mheap_unref(h)

    cdef void _dropChunkPool(self):
        """Give pooled arena chunks back to the page heap."""
        cdef int i
        for i in range(self._npool):
            freeObject(self.h, self._peekCache(), self._chunkPool[i].startAddr, False)
        self._npool = 0

    cdef void _dropOwnLargeSpare(self):
        """The calling thread's large spare goes back to the page heap
        (other threads' spares go when they end)."""
        cdef mcache* c = peekmcache(self.h)
        if c != NULL:
            dropLargeSpare(c)

    cdef mcache* _cache(self) except NULL:
        """The calling thread's mcache of this heap (GIL held); a Python
        thread's first one also hooks the thread's end (hookThreadEnd)."""
        cdef mcache* c = <mcache*>htls_get(self.h.serial)
        if c != NULL:
            return c
        c = getmcache(self.h)
        if c == NULL:
            raise MemoryError("cannot allocate a thread cache")
        hookThreadEnd()
        return c

    cdef mcache* _peekCache(self) noexcept nogil:
        """The calling thread's cache if it has one, else NULL (for frees:
        counted there, and freed without atomics when the span is its)."""
        return peekmcache(self.h)

    # -- the C-level API (see __init__.pxd) ---------------------------------

    cdef void* malloc(self, size_t size) noexcept nogil:
        """size bytes, 16-aligned (C's malloc); NULL when memory cannot be
        had or the heap is closed. malloc(0) returns the zero-size address,
        which free accepts."""
        cdef mheap* h = self.h
        if h == NULL or self._closed:
            return NULL
        return <void*>heapMalloc(h, size, False)

    cdef void* calloc(self, size_t n, size_t size) noexcept nogil:
        """n * size zeroed bytes (C's calloc): NULL on overflow or without
        memory. Memory known to be zero is not cleared again."""
        cdef mheap* h = self.h
        if h == NULL or self._closed:
            return NULL
        if size and n > (<size_t>-1) // size:
            return NULL
        return <void*>heapMalloc(h, n * size, True)

    cdef void* realloc(self, void* p, size_t size) noexcept nogil:
        """C's realloc: the contents up to the smaller size are kept;
        realloc(NULL, n) is malloc(n). NULL (and p untouched) on failure or
        on a closed heap."""
        cdef mheap* h = self.h
        if h == NULL or self._closed:
            return NULL
        return heapRealloc(h, p, size)

    cdef void free(self, void* p) noexcept nogil:
        """C's free: free(NULL) does nothing. A pointer this heap does not
        hold live (freed twice, never from it, not an object's start) is
        reported with a RuntimeWarning and counted in MemStats.invalid_frees,
        and changes nothing."""
        if self.h != NULL:
            heapFree(self.h, p)

    cdef size_t usable_size(self, void* p) noexcept nogil:
        """Bytes usable at p (the slot's size from p on); 0 if p is not a
        live allocation of this heap."""
        if self.h == NULL or p == NULL:
            return 0
        return usableSize(self.h, <uintptr_t>p)

    cdef Block _alloc(self, Py_ssize_t nbytes, size_t align, bint zero):
        cdef Block b = self._tryAlloc(nbytes, align, zero)
        if b is None:
            if <size_t>nbytes > MAX_ALLOC:
                raise MemoryError(f"allocation size out of range: {nbytes} bytes")
            raise MemoryError(f"cannot allocate {nbytes} bytes: out of memory "
                              "or address space")
        return b

    cdef Block _tryAlloc(self, Py_ssize_t nbytes, size_t align, bint zero):
        """A Block of nbytes, or None when the memory cannot be had (the
        caller words the MemoryError). Other errors propagate."""
        cdef int cls
        cdef uintptr_t p
        if nbytes == 0:
            return newBlock(self, ZEROBASE, 0, 0, 0, False)
        if nbytes < 0:
            raise ValueError(f"negative size: {nbytes}")
        p = self._allocRaw(<size_t>nbytes, align, zero, &cls)
        if p == 0:
            return None
        if cls == 0:
            return newBlock(self, p, nbytes, 0,
                            ((<size_t>nbytes + PAGE_SIZE - 1) >> PAGE_SHIFT) << PAGE_SHIFT, False)
        return newBlock(self, p, nbytes, cls, pyarena_class_to_size[cls],
                        nbytes < TINY_SIZE and align == 0)

    cdef uintptr_t _allocRaw(self, size_t nbytes, size_t align, bint zero, int* cls) except? 0:
        """nbytes >= 1 of memory from mallocgc: the address, or 0 when it
        cannot be had. cls receives the size class (0: large). A large
        object is cleared here, with the GIL released in chunks; an
        interrupted clear frees it and raises."""
        cdef mspan* large
        cdef uintptr_t p = mallocgc(self._cache(), nbytes, align, zero, cls, &large)
        if large != NULL:
            try:
                clearLarge(self.h, large, nbytes)
            except BaseException:
                freeObject(self.h, self._peekCache(), p, False)
                raise
        return p

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
            used) is not cleared again either way.
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
            Negative ``nbytes``, a bad ``align``, or a closed heap.
        TypeError
            ``nbytes`` or ``align`` not an integer.
        OverflowError
            ``nbytes`` too large for a C size.
        MemoryError
            The memory cannot be mapped.
        """
        cdef size_t a = 0
        if self._closed:
            raise ValueError("allocation from a closed heap")
        if align is not None:
            a = checkAlign(align)
        return self._alloc(nbytes, a, zero)

    # -- the NumPy face ----------------------------------------------------

    cdef object _array(self, object shape, object dtype, object order, bint zero):
        return self._arrayIn(shape, dtype, parseOrderFast(order), None, zero)

    cdef object _arrayIn(self, object shape, object dtype, bint fortran, object perm, bint zero):
        """A new array owning heap memory, laid out as arrayLayout says; the
        commonest call, an int shape with the dtype of the call before, is
        read inline."""
        cdef arraySpec spec
        cdef int cls
        cdef uintptr_t p
        cdef Py_ssize_t n
        cdef descrCache* dc = DESCR_CACHE
        descr = None
        if perm is None and <PyObject*>dtype == dc.key and not dc.hassub \
                and PyLong_CheckExact(shape):
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
            descr = arrayLayout(shape, dtype, perm, &spec)
        if self._closed:
            raise ValueError("allocation from a closed heap")
        if self._capsule is None:
            self._capsule = self._makeCapsule()
        if spec.nbytes == 0:
            p = ZEROBASE
        else:
            p = self._allocRaw(<size_t>spec.nbytes, spec.align, zero, &cls)
            if p == 0:
                raise allocFailed(spec.nd, spec.dims, descr, spec.nbytes)
        return wrapOwned(descr, spec.nd, spec.dims, spec.stridesp, <void*>p, fortran,
                         self._capsule)

    cdef object _makeCapsule(self):
        """This heap as a NumPy data-memory handler (NEP 49), in a capsule
        that holds a reference to the mheap."""
        cap = newHandlerCapsule(self.h)
        self.h.refs += 1
        return cap

    def zeros(self, shape, dtype=float, order="C", *, device=None, like=None):
        """A new array of zeros whose memory comes from this heap.

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

        Returns
        -------
        numpy.ndarray
            A plain, writable ndarray, aligned for its dtype and to at least
            16 bytes. It owns its memory (``flags.owndata``) through this
            heap's NumPy memory handler: NumPy gives the memory back to the
            heap when the array and every view of it are gone.

        Raises
        ------
        TypeError
            An object dtype, or a shape that is not integers.
        ValueError
            Negative dimensions, a size that overflows, a bad order, or a
            closed heap.
        MemoryError
            The memory cannot be mapped.

        See Also
        --------
        numpy.zeros, empty, full, zeros_like
        """
        if device is not None or like is not None:
            checkDeviceLike(device, like)
        return self._array(shape, dtype, order, True)

    def empty(self, shape, dtype=float, order="C", *, device=None, like=None):
        """A new array without initialising its entries (``numpy.empty``).

        Same parameters as ``zeros``. Memory that is known to be zero (fresh
        from the OS, or never used) is returned as it is; reused memory
        holds whatever was there.
        """
        if device is not None or like is not None:
            checkDeviceLike(device, like)
        return self._array(shape, dtype, order, False)

    def full(self, shape, fill_value, dtype=None, order="C", *, device=None, like=None):
        """A new array filled with ``fill_value`` (``numpy.full``).

        ``dtype=None`` takes the dtype of ``numpy.array(fill_value)``.
        """
        if device is not None or like is not None:
            checkDeviceLike(device, like)
        if dtype is None:
            dtype = np.array(fill_value).dtype
        a = self._array(shape, dtype, order, False)
        np.copyto(a, fill_value, casting="unsafe")
        return a

    cdef object _like(self, object a, object dtype, object order, object shape, bint zero):
        a, shape, dtype, fortran, perm = like_layout(a, dtype, order, shape)
        return self._arrayIn(shape, dtype, fortran, perm, zero)

    def zeros_like(self, a, dtype=None, order="K", subok=True, shape=None, *, device=None):
        """An array of zeros with the shape and type of ``a``
        (``numpy.zeros_like``), its memory from this heap.

        ``order='K'`` keeps ``a``'s memory layout, 'A' is 'F' when ``a`` is
        Fortran-contiguous, else 'C'. ``subok`` is accepted for NumPy's
        signature; the result is always a plain ndarray, since a subclass
        could not be guaranteed to keep the heap memory.
        """
        if device is not None:
            checkDeviceLike(device, None)
        return self._like(a, dtype, order, shape, True)

    def empty_like(self, a, dtype=None, order="K", subok=True, shape=None, *, device=None):
        """``zeros_like`` without initialising the entries (``numpy.empty_like``)."""
        if device is not None:
            checkDeviceLike(device, None)
        return self._like(a, dtype, order, shape, False)

    def full_like(self, a, fill_value, dtype=None, order="K", subok=True, shape=None, *,
                  device=None):
        """An array like ``a`` filled with ``fill_value`` (``numpy.full_like``)."""
        if device is not None:
            checkDeviceLike(device, None)
        out = self._like(a, dtype, order, shape, False)
        np.copyto(out, fill_value, casting="unsafe")
        return out

    # -- typed allocation: Go's newobject and newarray -------------------------

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
            in this heap (``p.x = 1.5``), kept alive as long as the instance.
            Aligned as the type asks (``dtype.alignment``,
            ``ctypes.alignment``). A zero-size type gets the zero-size
            address.

        Raises
        ------
        TypeError
            A type that holds Python object references (dtype object,
            ``ctypes.py_object``, structures containing them).
        """
        if is_ctypes_type(t):
            size, align = ctypes_layout(t)
            return _ctypesIn(t, self._typedBlock(size, align))
        return self._arrayIn((), t, False, None, True)

    def newarray(self, t, n):
        """``n`` zeroed values of type ``t`` (Go's newarray).

        Returns a 1-d array for a dtype, an instance of the ctypes array
        type ``t * n`` for a ctypes type. ``n == 0`` is allowed. ``n < 0``
        raises ValueError; ``n * sizeof(t)`` past size_t raises
        OverflowError, past the address space MemoryError, both with Go's
        message "allocation size out of range", before any memory is
        touched. See ``new`` for the types accepted.
        """
        if is_ctypes_type(t):
            size, align = ctypes_layout(t)
            total = array_bytes(size, n)
            return _ctypesIn(t * n, self._typedBlock(total, align))
        array_bytes(dtype_itemsize(t), n)
        return self._arrayIn((operator.index(n),), t, False, None, True)

    cdef Block _typedBlock(self, size_t size, size_t align):
        if self._closed:
            raise ValueError("allocation from a closed heap")
        if align < 1:
            align = 1
        if align > PAGE_SIZE:
            align = PAGE_SIZE
        return self._alloc(<Py_ssize_t>size, align, True)

    def owns(self, obj):
        """Whether ``obj`` lies in this heap's live memory.

        Parameters
        ----------
        obj : int, Block or buffer
            An address; a Block (True when it came from this heap); or any
            object exporting a buffer, such as a memoryview or a NumPy
            array, whose bytes must all lie in one live allocation of this
            heap. A zero-length buffer is judged by the object behind it
            (``.obj`` of a memoryview, ``.base`` of an array): an array
            made by this heap, or a Block of it.

        Returns
        -------
        bool

        Notes
        -----
        A tiny block counts as live as a whole while any value carved from
        it is alive.
        """
        cdef Py_buffer view
        cdef uintptr_t lo, hi, start, size
        cdef Py_ssize_t i, extent
        if isinstance(obj, Block):
            return (<Block>obj).heap is self
        if self.h == NULL:
            return False
        if isinstance(obj, int):
            if obj < 0 or obj >= 0x1000000000000:  # 1 << ADDR_BITS
                return False
            return liveObject(self.h, <uintptr_t>obj, &start, &size) != NULL
        if isinstance(obj, np.ndarray):
            # Through the array interface: the buffer protocol refuses some
            # dtypes (datetime64).
            if obj.nbytes == 0:
                return self._ownsEmpty(obj)
            first, end = byte_bounds(obj)
            lo = first
            hi = end - 1
        else:
            PyObject_GetBuffer(obj, &view, PyBUF_RECORDS_RO)
            try:
                if view.len == 0:
                    return self._ownsEmpty(obj)
                lo = hi = <uintptr_t>view.buf
                for i in range(view.ndim):
                    extent = (view.shape[i] - 1) * view.strides[i]
                    if extent < 0:
                        lo += extent
                    else:
                        hi += extent
                hi += view.itemsize - 1
            finally:
                PyBuffer_Release(&view)
        if liveObject(self.h, lo, &start, &size) == NULL:
            return False
        return hi < start + size

    cdef bint _ownsEmpty(self, object obj):
        """A zero-length buffer has no bytes to look up: follow .obj/.base to
        the array that owns the memory (is its NumPy handler this heap's?)
        or to a Block."""
        cdef int k
        for k in range(64):
            if obj is None:
                return False
            if isinstance(obj, Block):
                return (<Block>obj).heap is self
            if isinstance(obj, np.ndarray) and obj.flags.owndata:
                return self._capsule is not None and arrayHandler(obj) is self._capsule
            obj = obj.obj if isinstance(obj, memoryview) else getattr(obj, "base", None)
        return False

    def stats(self):
        """A snapshot of the heap's statistics.

        Returns
        -------
        MemStats
        """
        return self._stats()

    cdef object _stats(self):
        # Copy every counter into C arrays first and build Python objects
        # after: building them may run a GC, whose finalizers may free blocks
        # and would otherwise tear the snapshot.
        cdef mheap* h = self.h
        cdef mcache* c
        cdef int i
        cdef uint64_t m = 0, f = 0, allocBytes
        cdef uint64_t mallocs[NUM_SIZE_CLASSES]
        cdef uint64_t frees[NUM_SIZE_CLASSES]
        if h == NULL:
            return self._final
        pa_lock(&h.lock)
        allocBytes = h.retiredAllocBytes
        cdef uint64_t freed = pa_load64(&h.freedBytes) + h.retiredFreedBytes
        for i in range(NUM_SIZE_CLASSES):
            mallocs[i] = h.retiredMalloc[i]
            frees[i] = pa_load64(&h.nfree[i]) + h.retiredFree[i]
        # Other threads' counts are read as they are: exact when they are
        # not allocating at this moment.
        c = h.caches
        while c != NULL:
            for i in range(NUM_SIZE_CLASSES):
                mallocs[i] += c.nmalloc[i]
                frees[i] += c.nfree[i]
            allocBytes += c.allocBytes
            freed += c.freedBytes
            c = c.next
        for i in range(NUM_SIZE_CLASSES):
            m += mallocs[i]
            f += frees[i]
        cdef uint64_t mapped = h.pagesMapped
        cdef uint64_t inuse = h.pagesInUse - pa_load64(&h.pagesSpare)
        cdef uint64_t released = h.pagesReleased
        cdef uint64_t meta = h.persistent.sys + sizeof(mheap)
        cdef uint64_t chunks = h.persistent.nchunks
        pa_unlock(&h.lock)
        cdef uint64_t sweeps = pa_load64(&h.nsweeps)
        cdef uint64_t invalid = pa_load64(&h.invalidFrees)
        by_size = tuple([SizeClassStats(pyarena_class_to_size[i], mallocs[i], frees[i])
                         for i in range(NUM_SIZE_CLASSES)])
        return MemStats(
            heap_alloc=allocBytes - freed,
            heap_sys=mapped << PAGE_SHIFT,
            heap_idle=(mapped - inuse) << PAGE_SHIFT,
            heap_inuse=inuse << PAGE_SHIFT,
            heap_released=released << PAGE_SHIFT,
            heap_objects=m - f,
            mallocs=m,
            frees=f,
            total_alloc=allocBytes,
            metadata_sys=meta,
            persistent_chunks=chunks,
            sweeps=sweeps,
            invalid_frees=invalid,
            by_size=by_size,
        )

    def numpy_handler(self):
        """This heap as a NumPy data-memory handler (NEP 49): a
        ``PyCapsule`` named ``"mem_handler"`` whose handler is named
        ``"pyarena"``. See ``pyarena.numpy_allocator``.

        The capsule keeps the heap's memory mapped for as long as it, or any
        array allocated through it, is alive.
        """
        if self.h == NULL:
            raise ValueError("the heap is closed")
        if self._capsule is None:
            self._capsule = self._makeCapsule()
        return self._capsule

    def release(self):
        """Return every free page to the OS.

        Released pages read as zero when used again, so they are not
        cleared again; they cost a page fault instead.

        Returns
        -------
        int
            Bytes released by this call.
        """
        if self.h == NULL:
            return 0
        self._dropChunkPool()      # arena chunks kept for reuse are free memory too
        releaseSpares(self.h)      # and so are the classes' spare spans
        self._dropOwnLargeSpare()  # and this thread's large spare
        return scavengeAll(self.h)

    def close(self):
        """Stop allocation from this heap.

        Blocks still alive stay valid. When no object is alive the heap's
        memory is unmapped now; otherwise free pages are released to the OS
        now and the rest is unmapped when the heap object dies. Calling it
        again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        if self.h == NULL:
            return
        self.h.closed = 1
        self._dropChunkPool()
        releaseSpares(self.h)
        self._dropOwnLargeSpare()
        st = self._stats()
        if st.heap_objects == 0:
            import dataclasses
            self._final = dataclasses.replace(
                st, heap_sys=0, heap_idle=0, heap_inuse=0, heap_released=0,
                metadata_sys=0, persistent_chunks=0)
            self._destroy()
        else:
            scavengeAll(self.h)

    @property
    def closed(self):
        """True once ``close()`` has been called."""
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return f"<pyarena.Heap {state} at {id(self):#x}>"


# ---------------------------------------------------------------------------
# The heap as NumPy's data-memory handler (NEP 49).
#
# Arrays made by Heap.zeros and friends own their data (NPY_ARRAY_OWNDATA)
# with this heap's handler capsule as their mem_handler, so NumPy frees the
# data through handlerFree when the array dies: no owner object per array.
# NumPy may also allocate through the handler (ndarray.resize, and every
# array once the handler is installed as NumPy's current one). The
# callbacks need no GIL: heap metadata has its own locks.

cdef uintptr_t heapMalloc(mheap* h, size_t size, bint zero) noexcept nogil:
    """At least size bytes, 16-aligned (as C's malloc), zeroed if asked; 0
    without memory; the zero-size address for 0. Any thread, no GIL."""
    cdef mcache* c
    cdef mspan* large
    cdef uintptr_t p
    cdef int cls
    if h.closed:
        return 0           # Heap.close(): NumPy's handler stops too
    if size == 0:
        return ZEROBASE
    c = getmcache(h)
    if c == NULL:
        return 0
    p = mallocgc(c, size, 16, zero, &cls, &large)
    if large != NULL:
        clearLargeNogil(h, large, size)
    return p


cdef size_t usableSize(mheap* h, uintptr_t p) noexcept nogil:
    cdef uintptr_t start, size
    if p == ZEROBASE or liveObject(h, p, &start, &size) == NULL:
        return 0
    return start + size - p


cdef void* heapRealloc(mheap* h, void* p, size_t size) noexcept nogil:
    cdef size_t old
    cdef void* q
    cdef uintptr_t start, slot
    if p == NULL or <uintptr_t>p == ZEROBASE:
        return <void*>heapMalloc(h, size, False)
    if liveObject(h, <uintptr_t>p, &start, &slot) == NULL:
        reportInvalidFree(h, p, FREE_NOT_ALLOCATED)
        return NULL        # not a live allocation of ours: refuse
    if start != <uintptr_t>p:
        reportInvalidFree(h, p, FREE_NOT_OBJECT_START)
        return NULL        # inside one, not at its start: refuse
    old = slot
    if size <= old and size > old // 2:
        return p
    q = <void*>heapMalloc(h, size, False)
    if q == NULL:
        return NULL
    memcpy(q, p, old if old < size else size)
    heapFree(h, p)
    return q


cdef void heapFree(mheap* h, void* p) noexcept nogil:
    cdef int r
    if p == NULL or <uintptr_t>p == ZEROBASE:
        return
    r = freeObject(h, peekmcache(h), <uintptr_t>p, False)
    if r != FREE_OK:
        reportInvalidFree(h, p, r)


cdef void reportInvalidFree(mheap* h, void* p, int why) noexcept nogil:
    """Count a bad free and warn (RuntimeWarning) rather than corrupt."""
    pa_add64(&h.invalidFrees, 1)
    with gil:
        what = {FREE_NOT_IN_HEAP: "not in this heap",
                FREE_NOT_OBJECT_START: "not the start of an allocation",
                FREE_NOT_ALLOCATED: "not allocated (freed twice?)"}.get(why, "invalid")
        try:
            warnings.warn(f"pyarena: free of {<uintptr_t>p:#x} ignored: {what}",
                          RuntimeWarning, stacklevel=2)
        except BaseException:
            pass


# NumPy's callbacks: ctx is the mheap (the capsule holds a reference).

cdef void* handlerMalloc(void* ctx, size_t size) noexcept nogil:
    return <void*>heapMalloc(<mheap*>ctx, size if size else 1, False)


cdef void* handlerCalloc(void* ctx, size_t nelem, size_t elsize) noexcept nogil:
    if elsize and nelem > (<size_t>-1) // elsize:
        return NULL
    return <void*>heapMalloc(<mheap*>ctx, nelem * elsize if nelem * elsize else 1, True)


cdef void* handlerRealloc(void* ctx, void* p, size_t size) noexcept nogil:
    return heapRealloc(<mheap*>ctx, p, size if size else 1)


cdef void handlerFree(void* ctx, void* p, size_t size) noexcept nogil:
    # NumPy's size is not trusted (it can differ from what was asked):
    # spanOf finds the object from the address alone.
    heapFree(<mheap*>ctx, p)


cdef void handlerCapsuleDestructor(object cap) noexcept:
    cdef PyDataMem_Handler* handler = <PyDataMem_Handler*>PyCapsule_GetPointer(cap, b"mem_handler")
    if handler == NULL:
        return
    mheap_unref(<mheap*>handler.allocator.ctx)
    PyMem_RawFree(handler)


cdef object newHandlerCapsule(mheap* h):
    """A PyDataMem_Handler capsule for h."""
    cdef PyDataMem_Handler* handler = <PyDataMem_Handler*>PyMem_RawCalloc(1, sizeof(PyDataMem_Handler))
    if handler == NULL:
        raise MemoryError("cannot allocate a NumPy memory handler")
    strncpy(handler.name, b"pyarena", 127)
    handler.version = 1
    handler.allocator.ctx = h
    handler.allocator.malloc = handlerMalloc
    handler.allocator.calloc = handlerCalloc
    handler.allocator.realloc = handlerRealloc
    handler.allocator.free = handlerFree
    try:
        return PyCapsule_New(handler, b"mem_handler",
                             <PyCapsule_Destructor>handlerCapsuleDestructor)
    except BaseException:
        PyMem_RawFree(handler)
        raise


cdef object _ctypesIn(object t, Block b):
    # from_buffer: the value holds a view of the Block, so the memory lives
    # as long as the value, and copy and pickle treat it as any ctypes value.
    return t.from_buffer(b)


cdef size_t checkAlign(object align) except 0:
    """An align argument: a power of two from 1 to PAGE_SIZE."""
    if not isinstance(align, int):
        raise TypeError(f"align must be an int, not {type(align).__name__}")
    if align <= 0 or align & (align - 1) or align > PAGE_SIZE:
        raise ValueError(f"align must be a power of two from 1 to {PAGE_SIZE}, "
                         f"got {align}")
    return <size_t>align


cdef Heap _default = None


def default_heap():
    """The process-wide heap behind the module-level functions.

    Made on first use. If it has been closed, a new one takes its place.

    Returns
    -------
    Heap
    """
    global _default
    if _default is None or _default._closed:
        # A closed default heap is replaced: module-level allocation keeps
        # working, and the old heap lives on for the blocks it still has.
        _default = Heap()
    return _default


def alloc(Py_ssize_t nbytes, *, bint zero=True, align=None):
    """``default_heap().alloc(nbytes, zero=zero, align=align)``."""
    return default_heap().alloc(nbytes, zero=zero, align=align)


def stats():
    """``default_heap().stats()``."""
    return default_heap().stats()


def release():
    """``default_heap().release()``."""
    return default_heap().release()


cdef inline Heap _heap():
    if _default is not None and not _default._closed:
        return _default
    return default_heap()


@cython.binding(False)
def zeros(shape, dtype=float, order="C", *, device=None, like=None):
    """zeros(shape, dtype=None, order='C', *, device=None, like=None)
--

``default_heap().zeros(...)``: see ``Heap.zeros``."""
    if device is not None or like is not None:
        checkDeviceLike(device, like)
    return _heap()._array(shape, dtype, order, True)


@cython.binding(False)
def empty(shape, dtype=float, order="C", *, device=None, like=None):
    """empty(shape, dtype=None, order='C', *, device=None, like=None)
--

``default_heap().empty(...)``: see ``Heap.empty``."""
    if device is not None or like is not None:
        checkDeviceLike(device, like)
    return _heap()._array(shape, dtype, order, False)


def full(shape, fill_value, dtype=None, order="C", *, device=None, like=None):
    """``default_heap().full(...)``: see ``Heap.full``."""
    return _heap().full(shape, fill_value, dtype, order, device=device, like=like)


def zeros_like(a, dtype=None, order="K", subok=True, shape=None, *, device=None):
    """``default_heap().zeros_like(...)``: see ``Heap.zeros_like``."""
    if device is not None:
        checkDeviceLike(device, None)
    return _heap()._like(a, dtype, order, shape, True)


def empty_like(a, dtype=None, order="K", subok=True, shape=None, *, device=None):
    """``default_heap().empty_like(...)``: see ``Heap.empty_like``."""
    if device is not None:
        checkDeviceLike(device, None)
    return _heap()._like(a, dtype, order, shape, False)


def full_like(a, fill_value, dtype=None, order="K", subok=True, shape=None, *, device=None):
    """``default_heap().full_like(...)``: see ``Heap.full_like``."""
    return _heap().full_like(a, fill_value, dtype, order, subok, shape, device=device)
