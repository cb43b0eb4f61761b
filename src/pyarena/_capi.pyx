# cython: language_level=3
"""The C-level API and the NumPy data-memory handler (NEP 49): a heap's
allocation with C's meanings, for code that is not Python.

Both are tables of C function pointers over one mheap, made here:

- pyarena_allocator (pyarena_capi.h): malloc, calloc, realloc, free and
  usable_size, which a Heap hands out (Heap._capi, the head of the object,
  so that `heap.malloc(n)` from Cython is one indirect call; see
  pyarena/__init__.pxd). It lives in the Heap object, with ctx = the
  mheap; when the mheap is unmapped it becomes the closed table.
- PyDataMem_Handler, in a "mem_handler" capsule: NumPy's malloc, calloc,
  realloc and free(ctx, p, size). The capsule holds a reference to the
  mheap (releaseHeap in its destructor), so an array that owns heap memory
  keeps the heap mapped, after close() and after the Heap object is gone.

Every function runs without the GIL, from any thread, and never raises:
no memory is NULL; a closed heap allocates nothing (NULL; NumPy raises
MemoryError) but still frees; a free of a pointer the heap does not hold
live is reported with a RuntimeWarning, counted in invalid_frees and
ignored (_malloc.badFree), never corrupting the heap: spanOf and the
allocation bits decide, from the address alone.
"""

from libc.stdint cimport uintptr_t
from libc.string cimport memcpy, strncpy
from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer, PyCapsule_Destructor
from cpython.mem cimport PyMem_RawCalloc, PyMem_RawFree
from pyarena._types cimport mheap, mcache, mspan, pyarena_allocator, pa_add64
from pyarena._mcache cimport getmcache, lookupmcache, releaseHeap
from pyarena._mspan cimport nextFreeFast
from pyarena._mprof cimport countdown, mallocEventP
from pyarena._types cimport pyarena_size_to_class8_align16, SMALL_SIZE_MAX
from pyarena._malloc cimport (zerobaseAddr, mallocgc, freeObject, clearLargeNogil, liveObject,
                              clearSlot, mallocSmallSlow, debugMalloc,
                              badRealloc, FREE_NOT_OBJECT_START, FREE_NOT_ALLOCATED,
                              FREE_NOT_IN_HEAP)
from pyarena._mdebug cimport redzoneSizeOf
from pyarena._mheap cimport spanOf
from pyarena._ndarray cimport PyDataMem_Handler


# The zero-size address (_malloc.zerobase), read once: the free paths
# compare every pointer with it.
cdef uintptr_t ZEROBASE = zerobaseAddr()


cdef uintptr_t heapMallocDebug(mheap* h, size_t size, bint zero) noexcept nogil:
    """heapMallocSlow on a debug heap (apart, so that the release path
    keeps its registers)."""
    cdef int cls
    cdef uintptr_t slot
    cdef mcache* c
    if size == 0:
        return ZEROBASE
    c = getmcache(h)
    if c == NULL:
        return 0
    return debugMalloc(h, c, size, 16, zero, &cls, &slot)


cdef uintptr_t heapMallocSlow(mheap* h, size_t size, bint zero) noexcept nogil:
    """heapMalloc's general case: any size, a thread with no cache yet, a
    span that needs a refill, a closed heap."""
    cdef mcache* c
    cdef mspan* large
    cdef uintptr_t p
    cdef int cls
    if h.special:
        if h.closed:
            return 0
        return heapMallocDebug(h, size, zero)
    if size == 0:
        return ZEROBASE
    c = getmcache(h)
    if c == NULL:
        return 0
    # A refusal by the hard cap gets no retry here, unlike the Python face
    # (_malloc.mallocgcCapped): the test after mallocgc cost this path 2-5%
    # in instructions (the 8 KiB pair), whatever its shape.
    p = mallocgc(c, size, 16, zero, &cls, &large)
    if large != NULL:
        clearLargeNogil(h, large, size)
    return p


cdef inline uintptr_t heapMalloc(mheap* h, size_t size, bint zero) noexcept nogil:
    """At least size bytes, 16-aligned (as C's malloc), zeroed if asked; 0
    without memory or from a closed heap; the zero-size address for 0. The
    common case (1..1024 bytes, this thread's cache found in its slot, a
    free slot in its span's allocCache) is inline and calls nothing but
    clearSlot's memset for a large calloc; every other case is one tail
    call (Go's mallocgc fast path; mimalloc's mi_heap_malloc_small)."""
    cdef mcache* c = lookupmcache(h)
    cdef mspan* s
    cdef uintptr_t v
    cdef int cls
    if c == NULL or h.closed or size - 1 >= SMALL_SIZE_MAX:
        return heapMallocSlow(h, size, zero)
    cls = pyarena_size_to_class8_align16[(size + 7) >> 3]
    s = c.alloc[cls]
    v = nextFreeFast(s)
    if v == 0:
        return mallocSmallSlow(c, cls, size, zero)
    c.nmalloc[cls] += 1
    c.allocBytes += s.elemsize
    if zero and v < s.zeroLimit:
        clearSlot(v, size)
    if countdown(c, s.elemsize):
        return mallocEventP(c, v, s.elemsize, s)
    return v


cdef size_t usableSize(mheap* h, uintptr_t p) noexcept nogil:
    cdef uintptr_t start, size
    cdef size_t n
    if p == 0 or p == ZEROBASE or liveObject(h, p, &start, &size) == NULL:
        return 0
    if h.debug:
        # Up to the redzone, not into it.
        if not redzoneSizeOf(start, size, &n) or p - start >= n:
            return 0
        return start + n - p
    return start + size - p


cdef void* heapRealloc(mheap* h, void* p, size_t size) noexcept nogil:
    """C's realloc: the contents up to the smaller size are kept;
    realloc(NULL, n) is malloc(n). NULL, and p untouched, on failure, for
    a pointer that is not a live allocation's start, or from a closed heap."""
    cdef size_t old
    cdef void* q
    cdef uintptr_t start, slot
    if h.closed:
        return NULL
    if p == NULL or <uintptr_t>p == ZEROBASE:
        return <void*>heapMalloc(h, size, False)
    if liveObject(h, <uintptr_t>p, &start, &slot) == NULL:
        badRealloc(h, <uintptr_t>p,
                   FREE_NOT_IN_HEAP if spanOf(h, <uintptr_t>p) == NULL else FREE_NOT_ALLOCATED)
        return NULL
    if start != <uintptr_t>p:
        badRealloc(h, <uintptr_t>p, FREE_NOT_OBJECT_START)
        return NULL
    old = slot
    if h.debug:
        # Always moved: the new object gets its own redzone, the old one
        # its check at the free. Its contents end where its redzone starts.
        if not redzoneSizeOf(start, slot, &old):
            old = 0
    elif size <= old and size > old // 2:
        return p
    q = <void*>heapMalloc(h, size, False)
    if q == NULL:
        return NULL
    memcpy(q, p, old if old < size else size)
    heapFree(h, p)
    return q


cdef inline void heapFree(mheap* h, void* p) noexcept nogil:
    if p == NULL or <uintptr_t>p == ZEROBASE:
        return
    freeObject(h, <uintptr_t>p, False)


# ---------------------------------------------------------------------------
# pyarena_allocator: the C-level API (ctx is the mheap).

cdef void* capiMalloc(void* ctx, size_t size) noexcept nogil:
    return <void*>heapMalloc(<mheap*>ctx, size, False)


cdef void* capiCalloc(void* ctx, size_t n, size_t size) noexcept nogil:
    if size and n > (<size_t>-1) // size:
        return NULL
    return <void*>heapMalloc(<mheap*>ctx, n * size, True)


cdef void* capiRealloc(void* ctx, void* p, size_t size) noexcept nogil:
    return heapRealloc(<mheap*>ctx, p, size)


cdef void capiFree(void* ctx, void* p) noexcept nogil:
    heapFree(<mheap*>ctx, p)


cdef size_t capiUsableSize(void* ctx, void* p) noexcept nogil:
    return usableSize(<mheap*>ctx, <uintptr_t>p)


cdef void initAllocator(pyarena_allocator* a, mheap* h) noexcept nogil:
    """Fill a, the C-level function table of heap h."""
    a.ctx = h
    a.malloc = capiMalloc
    a.calloc = capiCalloc
    a.realloc = capiRealloc
    a.free = capiFree
    a.usable_size = capiUsableSize


# A Heap whose mheap has been unmapped (closed with nothing alive) points
# at this table: nothing can be allocated, and it has no pointers to free.

cdef void* closedMalloc(void* ctx, size_t size) noexcept nogil:
    return NULL


cdef void* closedCalloc(void* ctx, size_t n, size_t size) noexcept nogil:
    return NULL


cdef void* closedRealloc(void* ctx, void* p, size_t size) noexcept nogil:
    return NULL


cdef void closedFree(void* ctx, void* p) noexcept nogil:
    pass


cdef size_t closedUsableSize(void* ctx, void* p) noexcept nogil:
    return 0


cdef pyarena_allocator _closed
_closed.ctx = NULL
_closed.malloc = closedMalloc
_closed.calloc = closedCalloc
_closed.realloc = closedRealloc
_closed.free = closedFree
_closed.usable_size = closedUsableSize


cdef const pyarena_allocator* closedAllocator() noexcept nogil:
    return &_closed


# ---------------------------------------------------------------------------
# NumPy's handler (ctx is the mheap; the capsule holds a reference).
# NumPy may ask for 0 bytes and expects a pointer it can free: 1 byte then.

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
    releaseHeap(<mheap*>handler.allocator.ctx)
    PyMem_RawFree(handler)


cdef object newHandlerCapsule(mheap* h):
    """A PyDataMem_Handler capsule for h, holding a reference to it."""
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
        cap = PyCapsule_New(handler, b"mem_handler",
                            <PyCapsule_Destructor>handlerCapsuleDestructor)
    except BaseException:
        PyMem_RawFree(handler)
        raise
    h.refs += 1
    return cap


# ---------------------------------------------------------------------------
# Every thread: NumPy's default handler, edited in place.
#
# NumPy keeps the current handler in a context variable, so a handler made
# current covers the calling thread's context only; threads started before
# or after keep NumPy's default. For a process-wide install pyarena edits
# the default handler itself (its PyDataMem_Handler is writable memory of
# NumPy's module): its malloc and calloc then take from the installed heap,
# and its realloc and free route each pointer to the allocator that made
# it, the heap whose arenas hold it or NumPy's own functions, so arrays made
# before the install, and by NumPy while it is uninstalled, are freed where
# they came from. Uninstalling restores malloc and calloc only: pointers of
# the heap may still be alive and must keep finding their way back.
#
# Every heap ever installed this way keeps one reference for the rest of
# the process (an array of the default handler holds no capsule of ours).
# The functions are written one pointer at a time while other threads may
# call them; any mix of old and new is safe, because free and realloc decide
# by the pointer, not by which malloc made it.

from cpython.object cimport PyObject

cdef extern from "numpy/arrayobject.h":
    PyObject* PyDataMem_DefaultHandler
    int _import_array() except -1

from pyarena._mheap cimport arenaOf
from pyarena._types cimport pa_loadptr, pa_storeptr

cdef enum:
    PROCESS_HEAPS_MAX = 64

cdef PyDataMem_Handler* _numpyDefault = NULL
cdef PyDataMem_Handler _numpyOriginal          # NumPy's functions and name
cdef mheap* _processHeap = NULL                  # where malloc takes from now
cdef mheap* _processHeaps[PROCESS_HEAPS_MAX]     # every heap installed so far
cdef int _nProcessHeaps = 0


cdef inline mheap* processOwner(uintptr_t p) noexcept nogil:
    """The installed heap whose arenas hold p, or NULL (NumPy's)."""
    cdef int i
    for i in range(_nProcessHeaps):
        if arenaOf(_processHeaps[i], p) != NULL:
            return _processHeaps[i]
    return NULL


cdef void* processMalloc(void* ctx, size_t size) noexcept nogil:
    cdef mheap* h = <mheap*>pa_loadptr(<void**>&_processHeap)
    if h == NULL or h.closed:
        return _numpyOriginal.allocator.malloc(_numpyOriginal.allocator.ctx, size)
    return <void*>heapMalloc(h, size if size else 1, False)


cdef void* processCalloc(void* ctx, size_t nelem, size_t elsize) noexcept nogil:
    cdef mheap* h = <mheap*>pa_loadptr(<void**>&_processHeap)
    if h == NULL or h.closed:
        return _numpyOriginal.allocator.calloc(_numpyOriginal.allocator.ctx, nelem, elsize)
    if elsize and nelem > (<size_t>-1) // elsize:
        return NULL
    return <void*>heapMalloc(h, nelem * elsize if nelem * elsize else 1, True)


cdef void* processRealloc(void* ctx, void* p, size_t size) noexcept nogil:
    cdef mheap* owner
    cdef void* q
    cdef size_t old
    if p == NULL:
        return processMalloc(ctx, size)
    owner = processOwner(<uintptr_t>p)
    if owner == NULL:
        return _numpyOriginal.allocator.realloc(_numpyOriginal.allocator.ctx, p, size)
    if not owner.closed:
        return heapRealloc(owner, p, size if size else 1)
    # Its heap takes nothing any more: the memory moves to NumPy's.
    old = usableSize(owner, <uintptr_t>p)
    q = _numpyOriginal.allocator.malloc(_numpyOriginal.allocator.ctx, size if size else 1)
    if q == NULL:
        return NULL
    memcpy(q, p, old if old < size else size)
    heapFree(owner, p)
    return q


cdef void processFree(void* ctx, void* p, size_t size) noexcept nogil:
    cdef mheap* owner
    if p == NULL:
        return
    owner = processOwner(<uintptr_t>p)
    if owner != NULL:
        heapFree(owner, p)
    else:
        _numpyOriginal.allocator.free(_numpyOriginal.allocator.ctx, p, size)


cdef int installProcessHeap(mheap* h) except -1:
    """Make NumPy's default handler allocate from h, in every thread (GIL
    held). h is kept mapped for the rest of the process."""
    global _numpyDefault, _numpyOriginal, _nProcessHeaps
    cdef int i
    cdef bint known = False
    if _numpyDefault == NULL:
        _import_array()
        _numpyDefault = <PyDataMem_Handler*>PyCapsule_GetPointer(
            <object>PyDataMem_DefaultHandler, b"mem_handler")
        _numpyOriginal = _numpyDefault[0]
    for i in range(_nProcessHeaps):
        known = known or _processHeaps[i] == h
    if not known:
        if _nProcessHeaps == PROCESS_HEAPS_MAX:
            raise ValueError(f"at most {PROCESS_HEAPS_MAX} heaps can be installed "
                             "process-wide in one process")
        h.refs += 1
        _processHeaps[_nProcessHeaps] = h
        _nProcessHeaps += 1
    pa_storeptr(<void**>&_processHeap, h)
    # Route first (free, realloc), then allocate from the heap.
    _numpyDefault.allocator.free = processFree
    _numpyDefault.allocator.realloc = processRealloc
    _numpyDefault.allocator.calloc = processCalloc
    _numpyDefault.allocator.malloc = processMalloc
    strncpy(_numpyDefault.name, b"pyarena", 127)
    return 0


cdef int setProcessHeap(mheap* h) except -1:
    """Point the process-wide install at h (one installed before), or undo
    it for NULL: NumPy's own malloc and calloc again; free and realloc keep
    routing."""
    pa_storeptr(<void**>&_processHeap, h)
    if _numpyDefault != NULL and h == NULL:
        _numpyDefault.allocator.malloc = _numpyOriginal.allocator.malloc
        _numpyDefault.allocator.calloc = _numpyOriginal.allocator.calloc
        memcpy(_numpyDefault.name, _numpyOriginal.name, sizeof(_numpyOriginal.name))
    return 0
