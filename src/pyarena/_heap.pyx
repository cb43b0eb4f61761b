# cython: language_level=3
"""The Heap: Go's allocator over memory mapped for one Python object, and
the default heap behind the module-level functions.

A Heap owns one mheap (see _malloc.pyx for how allocation works) and is an
Allocator (_face.pyx): its values are Blocks that free their slot when
they die and arrays that own their memory through the heap's NEP 49
handler capsule (_capi.pyx). This module keeps what is the heap's own: its
lifetime (close, release, the context manager), its statistics and its
_place, the raw allocation the face is written over.

Lifetime. The mheap has two references: the Heap object's and its handler
capsule's, which every array owning heap memory holds. close() stops
allocation; the memory is unmapped when the last reference goes (at once,
when close() finds nothing alive), so blocks and arrays outlive close()
and the Heap object itself. Every Block holds the Heap.
"""

cimport cython
from libc.stdint cimport uint64_t, uintptr_t, int64_t
from cpython.object cimport PyObject, PyTypeObject
from pyarena._types cimport (mheap, mcache, mspan, PAGE_SHIFT, PAGE_SIZE, TINY_SIZE,
                             NUM_SIZE_CLASSES, pyarena_class_to_size, pa_load64, pa_lock,
                             pa_unlock)
from pyarena._mheap cimport mheap_new, scavengeAll
from pyarena._mgcpacer cimport scavEnable, scavDisable, setGoal, pacerEnable, pacerForget
from pyarena._mcache cimport registerHeap, releaseHeap, getmcacheGIL, peekmcache
from pyarena._malloc cimport (zerobaseAddr, mallocgc, freeObject, clearLarge, liveObject,
                              dropUserArenaChunks, debugMalloc, mallocgcCapped, releaseIdle)
from pyarena._mdebug cimport dbgTake
from pyarena._face cimport Allocator, Block, placement
from pyarena._capi cimport (initAllocator, closedAllocator, newHandlerCapsule,
                            installProcessHeap, setProcessHeap)
from pyarena._mcheck cimport checkHeap
from pyarena._ndarray cimport (checkDeviceLike, arrayHandler, emptyBase, descrCache,
                               theDescrCache, wrapOwned, npy_intp, PyLong_CheckExact)
from pyarena._mcache cimport lookupmcache
from pyarena._mspan cimport nextFreeFast
from pyarena._malloc cimport clearSlot, mallocSmallSlow
from pyarena._mprof cimport countAlloc, setProfileRate, profileRecords, MEM_PROFILE_RATE
from cpython.ref cimport Py_INCREF, Py_DECREF
from cpython.exc cimport PyErr_Occurred
from pyarena._types cimport pyarena_size_to_class8_align16, SMALL_SIZE_MAX
from pyarena._types cimport NUMPY_TRACE_DOMAIN, PyTraceMalloc_Track
from pyarena._mzero cimport zeroEnable, zeroDisable, prezeroDefault
from pyarena._mstats import MemStats, SizeClassStats
from pyarena._mcheck import HeapCorruptionError, HeapProblem

import numpy as np

# The zero-size address (_malloc.zerobase), read once.
cdef uintptr_t ZEROBASE = zerobaseAddr()


@cython.final
@cython.binding(False)
cdef class Heap(Allocator):
    """A heap of its own: Go's allocator over memory mapped for it alone.

    Use ``default_heap()`` for the process-wide heap; make a ``Heap()`` to
    keep a workload's memory apart (its statistics, its release, its
    lifetime). A heap is a context manager: ``with Heap() as h:`` closes it
    on exit. It has every allocation method of ``Allocator``: ``alloc``,
    ``zeros``, ``empty``, ``full``, the ``*_like`` trio, ``new``,
    ``newarray`` and ``owns``.

    Parameters
    ----------
    profile_rate : int, optional
        Bytes allocated per heap-profile sample, on average (Go's
        MemProfileRate): 512 KiB by default, 0 for no profiling, 1 to
        record every allocation. See ``profile_rate`` and
        ``heap_profile``.
    debug : bool, optional
        A debug heap (redzones, fill patterns, reports of misuse).
    prezero : bool, optional
        Clear freed large objects (2 MiB and up) ahead of time on an idle
        core, so that the next ``zeros`` of their size finds them clear
        (see ``prezero``). By default on when the process may use two CPUs
        or more and ``PYARENA_PREZERO`` is not ``0``.
    gogc : int, optional
        Pace Python's collector by this heap's bytes, as GOGC paces Go's:
        a full ``gc.collect()`` is requested once ``heap_alloc`` has grown
        by this percentage over the live bytes measured after the previous
        one (at least 4 MiB * gogc / 100). None (the default): no pacing.
        The collection runs at the interpreter's next safe point, in the
        main thread; it runs even while ``gc`` is disabled.
    memory_limit : int, optional
        A soft limit in bytes on the memory the heap holds from the OS
        (``heap_sys - heap_released``), like GOMEMLIMIT: past it, the
        allocating thread first gives idle pages back; no allocation fails
        because of it. None (the default): no limit. See
        ``set_memory_limit``. A heap with a limit (this or ``max_bytes``)
        does not clear ahead of time: ``prezero`` is off by default, and
        ``prezero=True`` with a limit is a ValueError.
    max_bytes : int, optional
        A hard cap on the same quantity (at least 8192): an allocation
        that would pass it after idle pages are given back fails
        (MemoryError; NULL from the C-level API and NumPy's handler).
    scavenge : bool, optional
        Run the background scavenger for this heap: idle pages free for a
        second or more go back to the OS, a few MiB per tenth of a second,
        on a native thread. Default: on when a limit is set.

    Notes
    -----
    Any number of threads may allocate and free at once, with or without
    the GIL (see the C-level API in ``pyarena/__init__.pxd``). Closing a
    heap stops allocation, also through its NumPy handler; blocks and
    arrays still alive stay valid, and the heap's memory is unmapped when
    the last of them (and the heap object) is gone.
    """

    def __cinit__(self):
        cdef mheap* h = mheap_new()
        if h == NULL:
            raise MemoryError("cannot map memory for a new heap")
        h.profileRate = MEM_PROFILE_RATE       # before any cache is made
        registerHeap(h)
        initAllocator(&self._table, h)
        self.h = h
        self._capi = &self._table
        self._closed = False
        self._final = None
        self._capsule = newHandlerCapsule(h)

    def __init__(self, *, profile_rate=None, debug=False, prezero=None, gogc=None,
                 memory_limit=None, max_bytes=None, scavenge=None):
        # Options are keywords; an unknown one is a TypeError, as in any
        # Python constructor. All are converted before the heap changes.
        cdef mheap* h = self.h
        if isinstance(debug, bool) or (isinstance(debug, int) and debug in (0, 1)):
            dbg = bool(debug)
        else:
            raise TypeError(f"debug must be a bool, not {type(debug).__name__}")
        gogcValue = _checkBytes("gogc", gogc, 0)
        limit = _checkBytes("memory_limit", memory_limit, 0)
        cap = _checkBytes("max_bytes", max_bytes, PAGE_SIZE)
        if scavenge is not None and not isinstance(scavenge, bool):
            raise TypeError(f"scavenge must be a bool or None, not {type(scavenge).__name__}")
        if profile_rate is None:
            # A debug heap records every allocation's stack, for its reports.
            profile_rate = 1 if dbg else MEM_PROFILE_RATE
        if h == NULL:
            raise ValueError("the heap is closed")
        if dbg != <bint>h.debug:
            if h.caches != NULL or h.pagesInUse:
                raise ValueError("debug is chosen when a heap is made, before it allocates")
            h.debug = dbg
            h.special = (h.special & 1) | (dbg << 1)
        # Clearing ahead keeps freed large objects in a queue, idle memory a
        # limit could not give back: a heap with a limit does not do it.
        limited = limit is not None or cap is not None
        if prezero is None:
            pz = _envPrezero() and not limited
        elif isinstance(prezero, bool):
            pz = prezero
            if pz and limited:
                raise ValueError("prezero cannot be combined with memory_limit or max_bytes")
        else:
            raise TypeError(f"prezero must be a bool or None, not {type(prezero).__name__}")
        newGogc = -1 if gogcValue is None else gogcValue
        if newGogc != h.pacer.gogc:
            # Threads' credits are theirs to write: the pacer is chosen
            # before any has a cache.
            if h.caches != NULL:
                raise ValueError("gogc is chosen when a heap is made, before it allocates")
            h.pacer.gogc = newGogc
            if newGogc >= 0:
                pa_lock(&h.lock)
                setGoal(h, 0)
                pa_unlock(&h.lock)
                pacerEnable(h)
            else:
                pacerForget(h)
        self.profile_rate = profile_rate
        self._setLimit(limit)
        cdef int64_t capBytes = -1 if cap is None else <int64_t>cap
        cdef uint64_t capPages = 0 if cap is None else <uint64_t>capBytes >> PAGE_SHIFT
        pa_lock(&h.lock)
        h.pacer.maxBytes = capBytes
        h.pacer.maxPages = capPages
        pa_unlock(&h.lock)
        if self._closed:
            pass                    # a closed heap has no scavenger
        elif scavenge or (scavenge is None and (limit is not None or cap is not None)):
            scavEnable(h)
        elif scavenge is not None:
            scavDisable(h)
        # A debug heap never clears ahead: its freed large objects keep the
        # freed pattern until they are reused.
        if pz and not dbg and not self._closed:
            zeroEnable(self.h)
        elif limited:
            zeroDisable(self.h)

    cdef object _setLimit(self, limit):
        """Set the soft limit (None: none); the previous one."""
        cdef mheap* h = self.h
        # C values on both sides of the lock: nothing under it may raise.
        cdef int64_t new = -1 if limit is None else <int64_t>limit
        cdef uint64_t pages = 0 if new < 0 else max(<uint64_t>new >> PAGE_SHIFT, 1)
        cdef int64_t old
        pa_lock(&h.lock)
        old = h.pacer.limitBytes
        h.pacer.limitBytes = new
        # In whole pages, at least one (0 pages means none).
        h.pacer.limitPages = pages
        pa_unlock(&h.lock)
        return None if old < 0 else old

    def set_memory_limit(self, limit):
        """Set the soft memory limit, like Go's ``debug.SetMemoryLimit``.

        Parameters
        ----------
        limit : int or None
            Bytes the heap may hold from the OS (``heap_sys -
            heap_released``) before allocating threads give idle pages
            back; None for no limit. A limit also starts the background
            scavenger for this heap unless it was turned off
            (``scavenge=False``), and turns clearing ahead (``prezero``)
            off: its queue holds idle memory the limit could not release.

        Returns
        -------
        int or None
            The previous limit.

        Raises
        ------
        TypeError
            ``limit`` is not an int or None.
        ValueError
            ``limit`` is negative, or the heap is closed.
        """
        value = _checkBytes("memory_limit", limit, 0)
        if self.h == NULL or self._closed:
            raise ValueError("the heap is closed")
        old = self._setLimit(value)
        if value is not None:
            zeroDisable(self.h)     # see __init__: no clearing ahead under a limit
            scavEnable(self.h)
        return old

    @property
    def gogc(self):
        """The pacer's percentage (``Heap(gogc=...)``), or None when off."""
        return None if self.h == NULL or self.h.pacer.gogc < 0 else self.h.pacer.gogc

    @property
    def memory_limit(self):
        """The soft memory limit in bytes, or None (``set_memory_limit``)."""
        return None if self.h == NULL or self.h.pacer.limitBytes < 0 else self.h.pacer.limitBytes

    @property
    def max_bytes(self):
        """The hard cap in bytes, or None."""
        return None if self.h == NULL or self.h.pacer.maxBytes < 0 else self.h.pacer.maxBytes

    @property
    def debug(self):
        """Whether this is a debug heap: redzones after every object, fill
        patterns, and reports of overflows, writes after free and bad frees
        (see the user guide's "Debugging memory errors")."""
        return self.h != NULL and <bint>self.h.debug

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
        dropUserArenaChunks(h)
        scavDisable(h)
        pacerForget(h)
        self.h = NULL
        # A table kept by C code stays valid while this object lives: it
        # turns into the closed one (nothing to allocate, nothing to free).
        self._table = closedAllocator()[0]
        self._capsule = None
        releaseHeap(h)

    # -- the raw allocation the face is written over --------------------------

    cdef object _place(self, size_t nbytes, size_t align, bint zero, placement* pl):
        """nbytes from mallocgc (align 0: the natural alignment); the heap
        itself owns the value. None when the memory cannot be had. A large
        object is cleared here, with the GIL released in chunks; an
        interrupted clear frees it and raises."""
        cdef mheap* h = self.h
        cdef mcache* c
        cdef mspan* large
        cdef uintptr_t p
        cdef int cls
        cdef uint64_t refused
        if self._closed or h == NULL:
            raise ValueError("allocation from a closed heap")
        pl.h = h
        pl.heap = <PyObject*>self
        pl.chunked = False
        pl.tiny = False
        if nbytes == 0:
            pl.addr = ZEROBASE
            pl.slot = 0
            pl.sizeclass = 0
            return self
        c = getmcacheGIL(h)
        if self.h != h or self._closed:
            # A thread's first cache makes Python objects (its end hook),
            # which may run a collection, whose finalizers may close this
            # heap: look again before using it.
            raise ValueError("allocation from a closed heap")
        if h.debug:
            return self._placeDebug(c, nbytes, align, zero, pl)
        refused = h.pacer.capRefused
        p = mallocgcCapped(h, c, nbytes, align, zero, &cls, &large, True)
        if p == 0:
            if h.pacer.capRefused != refused:
                raise MemoryError(f"cannot allocate {nbytes} bytes: the heap's max_bytes "
                                  f"({h.pacer.maxBytes}) would be passed")
            return None
        if large != NULL:
            try:
                clearLarge(h, large, nbytes)
            except BaseException:
                freeObject(h, p, False)
                raise
        pl.addr = p
        pl.sizeclass = cls
        if cls == 0:
            pl.slot = ((nbytes + PAGE_SIZE - 1) >> PAGE_SHIFT) << PAGE_SHIFT
        else:
            pl.slot = pyarena_class_to_size[cls]
            pl.tiny = nbytes < TINY_SIZE and align == 0
        return self

    cdef object _placeDebug(self, mcache* c, size_t nbytes, size_t align, bint zero,
                            placement* pl):
        """_place on a debug heap: what its earlier frees found is raised
        first; then the object, in a slot with a redzone (_mdebug); if its
        slot was written after its last free, the object is given back and
        that is raised."""
        cdef mheap* h = self.h
        cdef uintptr_t p, slot
        cdef int cls
        self._raiseFindings()
        p = debugMalloc(h, c, nbytes, align, zero, &cls, &slot)
        if p == 0:
            return None
        if self._pendingFindings():
            freeObject(h, p, False)
            self._raiseFindings()
        pl.addr = p
        pl.sizeclass = cls
        pl.slot = slot
        pl.tiny = False
        return self

    cdef bint _pendingFindings(self) noexcept:
        return self.h.dbgNFindings != self.h.dbgTaken

    cdef int _raiseFindings(self) except -1:
        """Raise HeapCorruptionError for a debug heap's findings not yet
        handed to Python (its frees cannot raise: they run in deallocators
        and C code)."""
        if self.h == NULL or not self.h.debug or not self._pendingFindings():
            return 0
        found = dbgTake(self.h)
        if found:
            raise HeapCorruptionError([HeapProblem(k, a, n) for k, a, n, _ in found],
                                      [m for _, _, _, m in found])
        return 0

    cdef bint _ownsRange(self, uintptr_t lo, uintptr_t hi) except -1:
        cdef uintptr_t start, size
        if self.h == NULL or liveObject(self.h, lo, &start, &size) == NULL:
            return False
        return hi < start + size

    cdef bint _ownsBlock(self, Block b) except -1:
        return b.heap is self

    cdef bint _ownsEmpty(self, object obj) except -1:
        """A zero-length buffer has no bytes to look up: follow what it rests
        on (array bases, memoryview exporters, read from C fields) to an
        array that owns its memory (through this heap's handler?) or to a
        Block."""
        cdef int k
        for k in range(64):
            if obj is None:
                return False
            if isinstance(obj, Block):
                return (<Block>obj).heap is self
            if isinstance(obj, np.ndarray) and arrayHandler(obj) is not None:
                return arrayHandler(obj) is self._capsule
            obj = emptyBase(obj)
        return False

    # -- statistics -------------------------------------------------------------

    def stats(self):
        """A snapshot of the heap's statistics (Go's MemStats meanings).

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
        cdef uint64_t nextGC = h.pacer.nextGC if h.pacer.gogc >= 0 else 0
        cdef uint64_t limitReleased = h.pacer.limitReleased
        cdef uint64_t bgReleased = h.pacer.bgReleased
        cdef uint64_t capRefused = h.pacer.capRefused
        cdef bint metaHuge = h.pacer.metaHuge
        pa_unlock(&h.lock)
        cdef uint64_t triggered = pa_load64(&h.pacer.triggered)
        cdef uint64_t sweeps = pa_load64(&h.nsweeps)
        cdef uint64_t ahead = pa_load64(&h.clearedAhead)
        cdef uint64_t byCaller = pa_load64(&h.clearedByCaller)
        cdef uint64_t skipped = pa_load64(&h.clearSkipped)
        cdef uint64_t invalid = pa_load64(&h.invalidFrees)
        cdef uint64_t corruptions = pa_load64(&h.corruptions)
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
            corruptions=corruptions,
            cleared_ahead=ahead,
            cleared_by_caller=byCaller,
            clear_skipped=skipped,
            by_size=by_size,
            gc_triggered=triggered,
            next_gc=nextGC,
            limit_released=limitReleased << PAGE_SHIFT,
            scavenger_released=bgReleased << PAGE_SHIFT,
            cap_refused=capRefused,
            metadata_huge_pages=metaHuge,
        )

    def check(self):
        """Walk every span and object of the heap and check its invariants:
        the page heap, every span's bitmaps, allocCache and counts, the
        central lists, and the MemStats identities.

        Safe from any thread, whatever the damage: it holds the heap's
        locks while it reads, and never follows a pointer it has not
        checked. Spans another thread is allocating from at that moment are
        checked only for what cannot change under it, and the object count
        identity only when no other thread has a cache of this heap.

        Returns
        -------
        int
            The number of live objects checked (tiny values counted one by
            one; arena chunks as one object each).

        Raises
        ------
        HeapCorruptionError
            A ``RuntimeError`` whose ``problems`` lists every finding as a
            ``HeapProblem(kind, address, size)``.
        """
        if self.h == NULL:
            return 0
        if not self.h.debug:
            return checkHeap(self.h)
        # A debug heap: what its frees and allocations found since the last
        # look, then the walk (which adds redzones and freed slots).
        found = dbgTake(self.h)
        pending = [HeapProblem(k, a, n) for k, a, n, _ in found]
        notes = [m for _, _, _, m in found]
        try:
            counted = checkHeap(self.h)
        except HeapCorruptionError as e:
            raise HeapCorruptionError(pending + e.problems, notes) from None
        if pending:
            raise HeapCorruptionError(pending, notes)
        return counted

    @property
    def profile_rate(self):
        """Bytes allocated per heap-profile sample, on average (Go's
        MemProfileRate): 524288 (512 KiB) by default, 0 for no profiling, 1
        to record every allocation. Setting it takes effect in every thread
        at its next allocation. See ``heap_profile``."""
        return <int64_t>self.h.profileRate if self.h != NULL else 0

    @profile_rate.setter
    def profile_rate(self, rate):
        cdef int overflow = 0
        cdef long long v
        if isinstance(rate, bool) or not isinstance(rate, int):
            raise TypeError(f"profile_rate must be an int, not {type(rate).__name__}")
        v = PyLong_AsLongLongAndOverflow(rate, &overflow)
        if overflow or v < 0:
            raise ValueError(f"profile_rate must be from 0 to 2**63 - 1, got {rate}")
        if self.h != NULL:
            setProfileRate(self.h, v)

    @property
    def prezero(self):
        """True while freed large objects of this heap are cleared ahead
        of time by the zeroing worker (``Heap(prezero=...)``; off after
        ``close()``). The worker runs only while a CPU is idle; the bytes it
        cleared, those allocating threads cleared and those known zero are
        in ``stats()``."""
        return self.h != NULL and self.h.zero.on != 0

    def heap_profile(self):
        """A snapshot of the heap profile: which lines allocated the
        sampled memory, and how much of it is still in use.

        Returns
        -------
        HeapProfile
            Its ``samples`` are scaled to estimates of the true totals
            (exact at ``profile_rate`` 1); ``write_pprof``, ``top`` and
            ``folded`` turn it into a pprof file, a table and flame-graph
            input.

        Notes
        -----
        Sampling follows Go: one allocation per ``profile_rate`` bytes on
        average, at exponentially distributed intervals, each recording
        the Python stack of the allocating thread (innermost 32 frames), or
        a frame naming the C-level API when the thread did not hold the
        GIL. A sampled object's free is counted when it happens.
        """
        from pyarena._pprof import HeapProfile, code_frame, TRUNCATED_FRAME
        if self.h == NULL:
            return HeapProfile.from_buckets([], max(self.profile_rate, 0))
        records = profileRecords(self.h, code_frame, tuple(TRUNCATED_FRAME) + (0,))
        return HeapProfile.from_buckets(records, <int64_t>self.h.profileRate)

    def numpy_handler(self):
        """This heap as a NumPy data-memory handler (NEP 49): a
        ``PyCapsule`` named ``"mem_handler"`` whose handler is named
        ``"pyarena"``. See ``pyarena.numpy_allocator``.

        The capsule keeps the heap's memory mapped for as long as it, or any
        array allocated through it, is alive.

        Raises
        ------
        ValueError
            The heap is closed and its memory already unmapped.
        """
        if self._capsule is None:
            raise ValueError("the heap is closed")
        return self._capsule

    # -- lifetime -------------------------------------------------------------

    def release(self):
        """Return every free page to the OS.

        Released pages read as zero when used again, so they are not
        cleared again; they cost a page fault instead.

        Returns
        -------
        int
            Bytes released by this call.
        """
        cdef mheap* h = self.h
        if h == NULL:
            return 0
        # Pooled arena chunks, queued large objects, spare spans and this
        # thread's large spare (other threads' go when they end) first.
        releaseIdle(h, peekmcache(h), True)
        return scavengeAll(h)

    def close(self):
        """Stop allocation from this heap.

        Blocks still alive stay valid. When no object is alive the heap's
        memory is unmapped now; otherwise free pages are released to the OS
        now and the rest is unmapped when the last object (and the heap
        object) is gone. Calling it again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        if self.h == NULL:
            return
        self.h.closed = 1
        self.h.special |= 1
        zeroDisable(self.h)
        scavDisable(self.h)
        self.release()
        st = self._stats()
        # _stats builds Python objects, which may run finalizers: look at
        # the heap again rather than trust what came before.
        if self.h == NULL:
            return
        if st.heap_objects == 0:
            import dataclasses
            self._final = dataclasses.replace(
                st, heap_sys=0, heap_idle=0, heap_inuse=0, heap_released=0,
                metadata_sys=0, persistent_chunks=0)
            self._destroy()

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
# The default heap and the module-level face on it.

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
        _default = Heap(profile_rate=_envProfileRate(), debug=_envDebug(),
                        gogc=_envGogc(), memory_limit=_envMemLimit())
    return _default


def _envDebug():
    """PYARENA_DEBUG=1 makes the default heap a debug heap (0 or unset: not),
    as PYTHONMALLOC=debug does for Python's allocator."""
    import os
    text = os.environ.get("PYARENA_DEBUG", "").strip()
    if text in ("", "0"):
        return False
    if text == "1":
        return True
    raise ValueError(f"PYARENA_DEBUG must be 0 or 1, got {text!r}")
def _envPrezero():
    """PYARENA_PREZERO (0 or 1, in Go's habit of GODEBUG-style switches):
    whether new heaps clear ahead of time; without it, on where the
    process may use two CPUs or more (_mzero.prezeroDefault)."""
    import os
    text = os.environ.get("PYARENA_PREZERO", "").strip()
    if text == "":
        return prezeroDefault()
    if text not in ("0", "1"):
        raise ValueError(f"PYARENA_PREZERO must be 0 or 1, got {text!r}")
    return text == "1"


def _envProfileRate():
    """PYARENA_MEMPROFILERATE (Go's MemProfileRate, set from outside): the
    default heap's profile rate; the heap's default without it (512 KiB, or
    every allocation on a debug heap)."""
    import os
    text = os.environ.get("PYARENA_MEMPROFILERATE")
    if text is None or text.strip() == "":
        return None
    try:
        rate = int(text, 0)
    except ValueError:
        raise ValueError(f"PYARENA_MEMPROFILERATE must be an integer, got {text!r}") from None
    if rate < 0:
        raise ValueError(f"PYARENA_MEMPROFILERATE must be >= 0, got {rate}")
    return rate


def _checkBytes(name, value, minimum):
    """An option that is None or an int >= minimum (not a bool)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, not {type(value).__name__}")
    if value < minimum or value >= 1 << 63:
        raise ValueError(f"{name} must be from {minimum} to 2**63 - 1, got {value}")
    return int(value)


def _envGogc():
    """PYARENA_GOGC (Go's GOGC): the default heap's pacer percentage; "off"
    or unset: no pacer."""
    import os
    text = os.environ.get("PYARENA_GOGC", "").strip()
    if text == "" or text.lower() == "off":
        return None
    try:
        value = int(text, 10)
    except ValueError:
        raise ValueError(f"PYARENA_GOGC must be an integer or off, got {text!r}") from None
    if value < 0:
        return None             # Go: a negative GOGC turns the collector off
    return value


_MEMLIMIT_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def _envMemLimit():
    """PYARENA_MEMLIMIT (Go's GOMEMLIMIT): the default heap's soft memory
    limit, bytes with an optional unit B, KiB, MiB, GiB or TiB; "off" or
    unset: none."""
    import os
    import re
    text = os.environ.get("PYARENA_MEMLIMIT", "").strip()
    if text == "" or text.lower() == "off":
        return None
    m = re.fullmatch(r"([0-9]+)\s*(B|KiB|MiB|GiB|TiB)?", text)
    if m is None:
        raise ValueError(f"PYARENA_MEMLIMIT must be bytes with an optional unit "
                         f"(B, KiB, MiB, GiB, TiB) or off, got {text!r}")
    return int(m.group(1)) * _MEMLIMIT_UNITS[m.group(2) or "B"]


cdef inline Heap _heap():
    if _default is not None and not _default._closed:
        return _default
    return default_heap()


def alloc(Py_ssize_t nbytes, *, bint zero=True, align=None):
    """``default_heap().alloc(nbytes, zero=zero, align=align)``."""
    return _heap().alloc(nbytes, zero=zero, align=align)


def stats():
    """``default_heap().stats()``."""
    return _heap().stats()


def release():
    """``default_heap().release()``."""
    return _heap().release()


def full(shape, fill_value, dtype=None, order="C", *, device=None, like=None):
    """``default_heap().full(...)``: see ``Allocator.full``."""
    return _heap().full(shape, fill_value, dtype, order, device=device, like=like)


def zeros_like(a, dtype=None, order="K", subok=True, shape=None, *, device=None):
    """``default_heap().zeros_like(...)``: see ``Allocator.zeros_like``."""
    return _heap().zeros_like(a, dtype, order, subok, shape, device=device)


def empty_like(a, dtype=None, order="K", subok=True, shape=None, *, device=None):
    """``default_heap().empty_like(...)``: see ``Allocator.empty_like``."""
    return _heap().empty_like(a, dtype, order, subok, shape, device=device)


def full_like(a, fill_value, dtype=None, order="K", subok=True, shape=None, *, device=None):
    """``default_heap().full_like(...)``: see ``Allocator.full_like``."""
    return _heap().full_like(a, fill_value, dtype, order, subok, shape, device=device)


# ---------------------------------------------------------------------------
# zeros and empty, as C functions.
#
# The commonest array request is zeros(n) or zeros(n, dtype) with the dtype
# of the call before. Cython's argument parsing for the face's signature
# costs more than the allocation does, so the module functions and the
# Heap's methods are METH_FASTCALL C functions: they read their positional
# arguments in place and make a 1-d array of up to 1024 bytes straight from
# the thread's cache (mallocgc's small path inline, Heap._array1). Any other
# call (keywords, an order, a shape that is not an int, another dtype, a
# larger array) goes to the face's own zeros and empty, unchanged.

cdef extern from "Python.h":
    void PyType_Modified(PyTypeObject* t)
    ctypedef struct PyMethodDef:
        const char* ml_name
        void* ml_meth
        int ml_flags
        const char* ml_doc
    int METH_FASTCALL
    int METH_KEYWORDS
    object PyCFunction_NewEx(PyMethodDef* ml, PyObject* self, object module)
    object PyDescr_NewMethod(PyTypeObject* type, PyMethodDef* meth)
    PyObject* PyTuple_GET_ITEM(object t, Py_ssize_t i)
    Py_ssize_t PyTuple_GET_SIZE(object t)
    Py_ssize_t PY_SSIZE_T_MAX
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1

cdef extern from *:
    """
    /* A 1-digit int of CPython 3.11's representation, read in place (its
       value, or -1 for anything else: negative, larger, or another
       layout), so that the fast path makes no call to read its shape. */
    #if PY_VERSION_HEX >= 0x030C0000
    static inline Py_ssize_t pyarena_small_index(PyObject *o) {
        return PyUnstable_Long_IsCompact((PyLongObject *)o) ?
            (Py_ssize_t)PyUnstable_Long_CompactValue((PyLongObject *)o) : -1;
    }
    #else
    static inline Py_ssize_t pyarena_small_index(PyObject *o) {
        Py_ssize_t size = Py_SIZE(o);
        if (size == 1) return (Py_ssize_t)((PyLongObject *)o)->ob_digit[0];
        return size == 0 ? 0 : -1;
    }
    #endif
    """
    Py_ssize_t smallIndex "pyarena_small_index"(PyObject* o) noexcept

# The dtype cache of _ndarray (the last dtype argument and its facts).
cdef descrCache* DC = theDescrCache()
cdef PyObject* FLOAT = <PyObject*>float
cdef PyObject* ORDER_C = <PyObject*>"C"


cdef extern from "numpy/arrayobject.h":
    ctypedef struct PyArray_Descr:
        pass
    PyTypeObject PyArray_Type
    PyObject* PyArray_NewFromDescr(PyTypeObject* subtype, PyArray_Descr* descr, int nd,
                                   npy_intp* dims, npy_intp* strides, void* data,
                                   int flags, PyObject* obj) noexcept
    int NPY_ARRAY_WRITEABLE
    int _import_array() except -1

cdef extern from *:
    """
    /* Make arr own its data through the heap's handler capsule, as if NumPy
       had allocated it there (see _ndarray.wrapOwned). */
    static inline void pyarena_array_own_fast(PyObject *arr, PyObject *capsule) {
        Py_INCREF(capsule);
        ((PyArrayObject_fields *)arr)->mem_handler = capsule;
        ((PyArrayObject_fields *)arr)->flags |= NPY_ARRAY_OWNDATA;
    }
    """
    void arrayOwnFast "pyarena_array_own_fast"(PyObject* arr, PyObject* capsule) noexcept

_import_array()


cdef inline PyObject* arrayFast(PyObject* self, PyObject** args, Py_ssize_t nargs,
                                PyObject* kwnames, bint zero) noexcept:
    """The fast path, all of it inline: args are (n,) or (n, dtype), n an
    int and dtype the cached one (the default float counts when the cache
    holds it), for self's heap (the default heap when self is NULL), n *
    itemsize at most 1024 bytes. A 1-d array straight from the thread's
    cache (mallocgc's small path), owned through the heap's handler: a new
    reference. NULL, with no error set, for any other call and for a heap
    that needs its general path; NULL with NumPy's error set if making the
    array object failed."""
    cdef Py_ssize_t n
    cdef PyObject* dtype = FLOAT
    cdef PyObject* arr
    cdef PyObject* heap
    cdef mheap* h
    cdef mcache* c
    cdef mspan* s
    cdef uintptr_t v
    cdef size_t nbytes
    cdef int cls
    cdef npy_intp dims[1]
    if kwnames != NULL or nargs - 1 > 1:
        return NULL
    if nargs == 2:
        dtype = args[1]
    if dtype != DC.key or DC.hassub or DC.align > 16 or not PyLong_CheckExact(<object>args[0]):
        return NULL
    n = smallIndex(args[0])
    if n < 0:
        return NULL
    nbytes = <size_t>n * <size_t>DC.itemsize
    if nbytes - 1 >= SMALL_SIZE_MAX:
        return NULL
    # Borrowed: the default heap (or self) stays alive for this call.
    heap = <PyObject*>_default if self == NULL else self
    if heap == <PyObject*>None:
        return NULL
    h = (<Heap>heap).h
    if h == NULL or (<Heap>heap)._closed:
        return NULL
    c = lookupmcache(h)
    if c == NULL:
        return NULL
    cls = pyarena_size_to_class8_align16[(nbytes + 7) >> 3]
    s = c.alloc[cls]
    v = nextFreeFast(s)
    if v == 0:
        v = mallocSmallSlow(c, cls, nbytes, zero)
        if v == 0:
            return NULL
    else:
        c.nmalloc[cls] += 1
        c.allocBytes += s.elemsize
        countAlloc(c, v, s.elemsize, s)
        if zero and v < s.zeroLimit:
            clearSlot(v, nbytes)
    dims[0] = n
    Py_INCREF(<object>DC.descr)     # PyArray_NewFromDescr steals it
    arr = PyArray_NewFromDescr(&PyArray_Type, <PyArray_Descr*>DC.descr, 1, dims, NULL,
                               <void*>v, NPY_ARRAY_WRITEABLE, NULL)
    if arr == NULL:
        freeObject(h, v, False)
        return NULL
    arrayOwnFast(arr, <PyObject*>(<Heap>heap)._capsule)
    PyTraceMalloc_Track(NUMPY_TRACE_DOMAIN, v, nbytes)    # NumPy's free untracks it
    return arr


cdef object arraySlow(PyObject* self, PyObject** args, Py_ssize_t nargs,
                      PyObject* kwnames, object generic):
    """The face's zeros/empty (generic) with the same arguments."""
    cdef Heap heap = _heap() if self == NULL else <Heap>self
    cdef Py_ssize_t i
    pos = tuple([heap] + [<object>args[i] for i in range(nargs)])
    if kwnames == NULL:
        return generic(*pos)
    kw = {<object>PyTuple_GET_ITEM(<object>kwnames, i): <object>args[nargs + i]
          for i in range(PyTuple_GET_SIZE(<object>kwnames))}
    return generic(*pos, **kw)


cdef inline object stolen(PyObject* a):
    """A new reference as an object, taking it over."""
    r = <object>a
    Py_DECREF(r)
    return r


cdef int raised() except -1:
    """Return to the caller with the error already set."""
    return -1


cdef object zerosCall(PyObject* self, PyObject** args, Py_ssize_t nargs, PyObject* kwnames):
    """Heap.zeros as a C function."""
    cdef PyObject* a = arrayFast(self, args, nargs, kwnames, True)
    if a != NULL:
        return stolen(a)
    if PyErr_Occurred() != NULL:
        raised()
    return arraySlow(self, args, nargs, kwnames, _faceZeros)


cdef object emptyCall(PyObject* self, PyObject** args, Py_ssize_t nargs, PyObject* kwnames):
    """Heap.empty as a C function."""
    cdef PyObject* a = arrayFast(self, args, nargs, kwnames, False)
    if a != NULL:
        return stolen(a)
    if PyErr_Occurred() != NULL:
        raised()
    return arraySlow(self, args, nargs, kwnames, _faceEmpty)


cdef object zerosModuleCall(PyObject* module, PyObject** args, Py_ssize_t nargs,
                            PyObject* kwnames):
    """pyarena.zeros as a C function (bound to the module, which it
    ignores: the default heap)."""
    cdef PyObject* a = arrayFast(NULL, args, nargs, kwnames, True)
    if a != NULL:
        return stolen(a)
    if PyErr_Occurred() != NULL:
        raised()
    return arraySlow(NULL, args, nargs, kwnames, _faceZeros)


cdef object emptyModuleCall(PyObject* module, PyObject** args, Py_ssize_t nargs,
                            PyObject* kwnames):
    """pyarena.empty as a C function."""
    cdef PyObject* a = arrayFast(NULL, args, nargs, kwnames, False)
    if a != NULL:
        return stolen(a)
    if PyErr_Occurred() != NULL:
        raised()
    return arraySlow(NULL, args, nargs, kwnames, _faceEmpty)


_faceZeros = Allocator.zeros
_faceEmpty = Allocator.empty

cdef bytes _zerosModuleDoc = (
    "zeros($module, /, shape, dtype=None, order='C', *, device=None, like=None)\n--\n\n"
    "``default_heap().zeros(...)``: see ``Allocator.zeros``.").encode()
cdef bytes _emptyModuleDoc = (
    "empty($module, /, shape, dtype=None, order='C', *, device=None, like=None)\n--\n\n"
    "``default_heap().empty(...)``: see ``Allocator.empty``.").encode()
cdef bytes _zerosMethodDoc = (
    "zeros($self, /, shape, dtype=None, order='C', *, device=None, like=None)\n--\n\n"
    + Allocator.zeros.__doc__).encode()
cdef bytes _emptyMethodDoc = (
    "empty($self, /, shape, dtype=None, order='C', *, device=None, like=None)\n--\n\n"
    + Allocator.empty.__doc__).encode()

cdef PyMethodDef _zerosModuleDef
cdef PyMethodDef _emptyModuleDef
cdef PyMethodDef _zerosMethodDef
cdef PyMethodDef _emptyMethodDef


cdef void fillDef(PyMethodDef* d, const char* name, void* fn, bytes doc):
    d.ml_name = name
    d.ml_meth = fn
    d.ml_flags = METH_FASTCALL | METH_KEYWORDS
    d.ml_doc = doc


fillDef(&_zerosModuleDef, "zeros", <void*>zerosModuleCall, _zerosModuleDoc)
fillDef(&_emptyModuleDef, "empty", <void*>emptyModuleCall, _emptyModuleDoc)
fillDef(&_zerosMethodDef, "zeros", <void*>zerosCall, _zerosMethodDoc)
fillDef(&_emptyMethodDef, "empty", <void*>emptyCall, _emptyMethodDoc)
import sys
zeros = PyCFunction_NewEx(&_zerosModuleDef, <PyObject*>sys.modules[__name__], __name__)
empty = PyCFunction_NewEx(&_emptyModuleDef, <PyObject*>sys.modules[__name__], __name__)
# Heap's own zeros and empty (shadowing the face's in Heap's MRO).
cdef dict _heapDict = <dict>(<PyTypeObject*>Heap).tp_dict
_heapDict["zeros"] = PyDescr_NewMethod(<PyTypeObject*>Heap, &_zerosMethodDef)
_heapDict["empty"] = PyDescr_NewMethod(<PyTypeObject*>Heap, &_emptyMethodDef)
PyType_Modified(<PyTypeObject*>Heap)


# ---------------------------------------------------------------------------
# The process-wide install (see _capi: NumPy's default handler, edited).

def _install_process(Heap heap not None):
    """NumPy's default handler allocates from heap in every thread; heap
    stays mapped for the rest of the process. Called by
    install_numpy_allocator(scope="process")."""
    if heap.h == NULL or heap._closed:
        raise ValueError("the heap is closed")
    installProcessHeap(heap.h)


def _set_process(heap):
    """Point the process-wide install at an installed heap again, or undo
    it (None)."""
    setProcessHeap(NULL if heap is None else (<Heap?>heap).h)
