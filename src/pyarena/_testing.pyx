# cython: language_level=3
"""Testing hooks into the allocator's internals (Go: export_test.go).

Not public API. Tests use these to look at bitmaps, span states, free runs
and the invariants of each layer instead of guessing from outside.
"""

cimport cython
from libc.stdint cimport uint64_t, uintptr_t, int64_t, uint32_t
from cpython.object cimport PyObject
from libc.stdlib cimport calloc, free
from pyarena._types cimport (mheap, mspan, mcache, heapArena, mSpanList, mSpanDead, mSpanInUse,
                             mSpanFree, inNoList, inPartial, inFull, inFreePages, inSpare,
                             PAGE_SHIFT, PAGE_SIZE, PAGES_PER_ARENA, NUM_SIZE_CLASSES,
                             MAX_FREE_LIST_PAGES, BITMAP_WORDS, TINY_SIZE_CLASS,
                             pyarena_class_to_allocnpages)
from pyarena._mspan cimport (initSpan, sweep, nextFreeIndex, nextFreeFast, objIndex,
                             isAllocated, isFreed, popcount64)
from pyarena._mheap cimport spanOf, arenaOf
from pyarena._persistentalloc cimport inPersistentAlloc
from pyarena._heap cimport Heap
from pyarena._mcache cimport dropLargeSpare, getmcacheGIL, liveHeaps
from pyarena._mcheck cimport checkHeap
from pyarena._malloc cimport clearInterruptions
from pyarena._mzero cimport zeroFlush
from pyarena._mcentral cimport freeSlot
from pyarena._mspan cimport freeSlotLocal

STATES = {mSpanDead: "dead", mSpanInUse: "inuse", mSpanFree: "free"}
LISTS = {inNoList: None, inPartial: "partial", inFull: "full", inFreePages: "free",
         inSpare: "spare"}


cdef object bits(uint64_t* words, unsigned int n):
    cdef unsigned int w
    v = 0
    for w in range((n + 63) >> 6):
        v |= (<object>words[w]) << (64 * w)
    return v & (((<object>1) << n) - 1)


cdef dict spanDict(mspan* s):
    return dict(
        start=s.startAddr, npages=s.npages, state=STATES.get(s.state, s.state),
        size_class=s.sizeclass, elemsize=s.elemsize, nelems=s.nelems,
        freeindex=s.freeindex, alloc_count=s.allocCount, nfreed=s.nfreed + s.nfreedLocal,
        freshindex=s.freshindex, needzero=bool(s.needzero), incache=bool(s.incache),
        list=LISTS.get(s.list, s.list), alloc_cache=s.allocCache,
        alloc_bits=bits(s.allocBits, s.nelems),
        free_bits=bits(s.freeBits, s.nelems) | bits(s.localFreeBits, s.nelems),
        tiny=s.tinyRefs != NULL, owned=s.ownerThread != 0, nsampled=s.nsampled)


cdef mheap* heapOf(Heap heap) except NULL:
    if heap.h == NULL:
        raise ValueError("heap is destroyed")
    return heap.h


def span_of(Heap heap, uintptr_t addr):
    """The in-use span holding addr as a dict, or None (spanOf)."""
    cdef mspan* s = spanOf(heapOf(heap), addr)
    return None if s == NULL else spanDict(s)


def page_owner(Heap heap, uintptr_t addr):
    """spans[] entry for the page of addr, valid or not, as a dict (or None
    outside the heap's arenas)."""
    cdef heapArena* ha = arenaOf(heapOf(heap), addr)
    if ha == NULL:
        return None
    cdef mspan* s = ha.spans[(addr - ha.base) >> PAGE_SHIFT]
    return None if s == NULL else spanDict(s)


def in_persistent_alloc(Heap heap, uintptr_t addr):
    return inPersistentAlloc(&heapOf(heap).persistent, <void*>addr)


def cached_spans(Heap heap):
    """{sizeclass: span dict} of the calling thread's cache, and its tiny
    block as (address, offset) or None."""
    cdef mcache* c = getmcacheGIL(heapOf(heap))
    cdef int i
    out = {}
    for i in range(NUM_SIZE_CLASSES):
        if c.alloc[i].state != mSpanDead:
            out[i] = spanDict(c.alloc[i])
    tiny = (c.tiny, c.tinyoffset) if c.tiny else None
    return out, tiny


def num_caches(Heap heap):
    cdef mcache* c = heapOf(heap).caches
    n = 0
    while c != NULL:
        n += 1
        c = c.next
    return n


def free_runs(Heap heap):
    """Free page runs as sorted (start, npages, released_pages) tuples."""
    cdef mheap* h = heapOf(heap)
    cdef int i
    cdef mspan* s
    out = []
    for i in range(MAX_FREE_LIST_PAGES + 1):
        s = h.free[i].first if i < MAX_FREE_LIST_PAGES else h.freelarge.first
        while s != NULL:
            out.append((s.startAddr, s.npages, _countScav(h, s.startAddr, s.npages)))
            s = s.next
    return sorted(out)


cdef uintptr_t _countScav(mheap* h, uintptr_t base, uintptr_t npages):
    cdef uintptr_t n = 0, a
    cdef heapArena* ha
    cdef uintptr_t i
    for a in range(base, base + (npages << PAGE_SHIFT), PAGE_SIZE):
        ha = arenaOf(h, a)
        i = (a - ha.base) >> PAGE_SHIFT
        n += (ha.scav[i >> 6] >> (i & 63)) & 1
    return n


def check_span(dict d):
    """Assert the small-span invariants listed in _mspan.pxd on a span dict."""
    n = d["nelems"]
    fi = d["freeindex"]
    allocated = d["alloc_bits"] | ((1 << fi) - 1)
    assert bin(allocated & ((1 << n) - 1)).count("1") == d["alloc_count"], d
    assert bin(d["free_bits"]).count("1") == d["nfreed"], d
    assert d["free_bits"] & ~allocated == 0, "a freed slot is not allocated"
    valid = min(64 - fi % 64, n - fi) if fi < n else 0
    if valid > 0:
        window = (~(d["alloc_bits"] >> fi)) & ((1 << valid) - 1)
        assert d["alloc_cache"] & ((1 << valid) - 1) == window, "allocCache out of step"


def check_heap(Heap heap):
    """Walk every page of every arena and assert the page heap's invariants
    (see _mheap.pyx); check every small span. Returns a summary dict."""
    cdef mheap* h = heapOf(heap)
    cdef heapArena* ha = h.allArenas
    cdef mspan* s
    cdef int i, j
    cdef mSpanList* lst
    inuse_pages = 0
    released = 0
    spans = {}
    runs = free_runs(heap)
    run_pages = sum(r[1] for r in runs)
    released = sum(r[2] for r in runs)
    for k in range(len(runs) - 1):
        assert runs[k][0] + (runs[k][1] << PAGE_SHIFT) < runs[k + 1][0], \
            "free runs touch: not coalesced"
    # In-use spans: from spans[] of every arena, every page must agree.
    while ha != NULL:
        for i in range(PAGES_PER_ARENA):
            s = ha.spans[i]
            a = ha.base + (i << PAGE_SHIFT)
            if s != NULL and s.state == mSpanInUse and s.startAddr <= a < \
                    s.startAddr + (s.npages << PAGE_SHIFT):
                spans[s.startAddr] = <uintptr_t>s
        ha = ha.next
    for start, ptr in spans.items():
        s = <mspan*><uintptr_t>ptr
        inuse_pages += s.npages
        for a in range(s.startAddr, s.startAddr + (s.npages << PAGE_SHIFT), PAGE_SIZE):
            assert spanOf(h, a) == s, "spans[] disagrees inside an in-use span"
        if s.sizeclass == 0:
            if s.list == inSpare:
                assert s.allocCount == 0, "a large spare holds an object"
            continue
        d = spanDict(s)
        check_span(d)
        if s.list == inSpare:
            assert s.allocCount == 0 \
                and s.nfreed == 0 and not s.incache, "a spare span is not empty"
            continue
        assert s.allocCount > s.nfreed + s.nfreedLocal or s.incache, "an empty span is kept"
        if not s.incache:
            assert s.nfreedLocal == 0, "an uncached span holds local frees"
            want = "partial" if (s.allocCount < s.nelems or s.nfreed) else "full"
            assert d["list"] == want, (d, want)
    # Spans on central lists are in use and of the list's class.
    for i in range(NUM_SIZE_CLASSES):
        for j in range(2):
            lst = &h.central[i].partial if j == 0 else &h.central[i].full
            s = lst.first
            while s != NULL:
                assert s.state == mSpanInUse and s.sizeclass == i and not s.incache
                assert s.list == (inPartial if j == 0 else inFull)
                s = s.next
    assert inuse_pages == h.pagesInUse, (inuse_pages, h.pagesInUse)
    assert inuse_pages + run_pages == h.pagesMapped, (inuse_pages, run_pages, h.pagesMapped)
    assert released == h.pagesReleased, (released, h.pagesReleased)
    return dict(inuse_pages=inuse_pages, free_pages=run_pages, released_pages=released,
                spans=len(spans), runs=len(runs))


@cython.binding(False)
cdef class SpanSim:
    """One small span with no memory behind it (startAddr 0), to drive
    nextFreeFast, nextFreeIndex, freeing and sweep directly."""
    cdef mspan* s

    def __cinit__(self, int sizeclass):
        if not 1 <= sizeclass < NUM_SIZE_CLASSES:
            raise ValueError("sizeclass must be 1..67")
        self.s = <mspan*>calloc(1, sizeof(mspan))
        if self.s == NULL:
            raise MemoryError
        self.s.npages = pyarena_class_to_allocnpages[sizeclass]
        self.s.state = mSpanInUse
        initSpan(self.s, sizeclass, False)
        self.s.incache = 1

    def __dealloc__(self):
        free(self.s)

    def alloc(self):
        """Slot index allocated, by the fast path if it can, else the slow
        path; None when the span is full."""
        cdef uintptr_t v
        # startAddr is 0, so slot 0's address is 0 too: use a base of one
        # page for the fast path's result and subtract it.
        self.s.startAddr = PAGE_SIZE
        v = nextFreeFast(self.s)
        if v != 0:
            return (v - PAGE_SIZE) // self.s.elemsize
        idx = nextFreeIndex(self.s)
        if idx == self.s.nelems:
            return None
        self.s.allocCount += 1
        return idx

    def alloc_fast(self):
        """nextFreeFast alone: slot index or None."""
        self.s.startAddr = PAGE_SIZE
        cdef uintptr_t v = nextFreeFast(self.s)
        return None if v == 0 else (v - PAGE_SIZE) // self.s.elemsize

    def free(self, unsigned int idx, bint local=False):
        """Record slot idx freed (as Python dropping its last reference),
        through the allocator's own free paths: by another thread
        (_mcentral.freeSlot: freeBits, atomically) or by the owner
        (_mspan.freeSlotLocal). The span counts as cached (incache), as a
        span being allocated from is, so freeSlot never looks for its
        mcentral. ValueError where _malloc.freeObject would refuse: a slot
        not allocated (its isAllocated test), or freed already (the free
        path's own answer)."""
        cdef bint ok
        if idx >= self.s.nelems or not isAllocated(self.s, idx):
            raise ValueError(f"slot {idx} is not allocated")
        ok = freeSlotLocal(self.s, idx) if local else freeSlot(NULL, self.s, idx)
        if not ok:
            raise ValueError(f"slot {idx} was freed already")

    def sweep(self):
        sweep(self.s)

    def index_of(self, uintptr_t offset):
        """objIndex of a byte offset into the span (the divide magic)."""
        self.s.startAddr = PAGE_SIZE
        return objIndex(self.s, PAGE_SIZE + offset)

    def info(self):
        return spanDict(self.s)


def drop_large_spare(Heap heap):
    """Give the calling thread's large spare back to the page heap, as if
    another large free had replaced it, and the large objects waiting in
    the heap's zeroing queue (_mzero) with it; True if there was any."""
    cdef mheap* h = heapOf(heap)
    cdef mcache* c = getmcacheGIL(h)
    cdef bint had = c.largeSpare != NULL or h.zero.queue.first != NULL
    dropLargeSpare(c)
    zeroFlush(h)
    return had


def large_spare(Heap heap):
    """Start address of the calling thread's large spare, or None."""
    cdef mcache* c = getmcacheGIL(heapOf(heap))
    return None if c.largeSpare == NULL else c.largeSpare.startAddr


def check_all_heaps():
    """Heap.check() on every heap alive in the process, Heap objects or
    not (a heap kept mapped by its arrays alone too): the tests' fixture
    runs it after every test. Returns the number of heaps checked."""
    cdef mheap* hs[256]
    cdef int n = liveHeaps(hs, 256)
    cdef int i
    if n > 256:
        n = 256
    for i in range(n):
        checkHeap(hs[i])
    return n


def corrupt(Heap heap, uintptr_t addr, str what):
    """Damage the metadata of the span holding addr, for tests of
    Heap.check(): 'alloc_bits' flips the slot's allocBits bit, 'alloc_count'
    adds one to allocCount, 'nfreed' adds one to nfreed, 'alloc_cache'
    flips allocCache's low bit, 'free_bits' sets a freeBits bit of a slot
    never allocated, 'spans_index' points the span's last page at a record
    outside the heap's metadata, 'pages_released' adds one to the released
    page count."""
    cdef mheap* h = heapOf(heap)
    cdef mspan* s = spanOf(h, addr)
    cdef heapArena* ha
    cdef uintptr_t idx, last
    if s == NULL:
        raise ValueError(f"{addr:#x} is not in an in-use span")
    idx = 0 if s.sizeclass == 0 else objIndex(s, addr)
    if what == "alloc_bits":
        s.allocBits[idx >> 6] ^= (<uint64_t>1) << (idx & 63)
    elif what == "alloc_count":
        s.allocCount += 1
    elif what == "nfreed":
        s.nfreed += 1
    elif what == "alloc_cache":
        s.allocCache ^= 1
    elif what == "free_bits":
        idx = s.nelems - 1
        s.freeBits[idx >> 6] |= (<uint64_t>1) << (idx & 63)
    elif what == "spans_index":
        last = s.startAddr + ((s.npages - 1) << PAGE_SHIFT)
        ha = arenaOf(h, last)
        ha.spans[(last - ha.base) >> PAGE_SHIFT] = <mspan*><uintptr_t>0xdead0000
    elif what == "pages_released":
        h.pagesReleased += 1
    elif what == "zero_queue":
        h.zero.npages += 1
    else:
        raise ValueError(f"unknown damage {what!r}")


def clear_interruptions():
    """(interrupted clears so far, bytes the last one had cleared, bytes it
    was asked to clear): memclrNoHeapPointersChunked's record of signals
    that stopped it part way."""
    cdef size_t done, total, count
    clearInterruptions(&done, &total, &count)
    return count, done, total


cdef extern from "pyarena_capi.h":
    """
    static inline size_t pyarena_header_capi_offset(void) {
        return offsetof(pyarena_HeapObject, allocator);
    }
    """
    size_t headerCapiOffset "pyarena_header_capi_offset"()


def capi_offset(Heap heap not None):
    """(offset of Allocator._capi in a Heap object, offset of the allocator
    pointer in pyarena_capi.h's pyarena_HeapObject): equal, or code built
    against the header would read the wrong word."""
    return (<size_t>(<char*>&heap._capi - <char*><PyObject*>heap), headerCapiOffset())


# -- heap profiling --------------------------------------------------------

from pyarena._mprof cimport cheaprand, fastexprand, nextSampleNoFP, armCache, nextSample


def c_cheaprand(uint64_t state):
    """(new state, value) of the C wyrand, for comparison with _pprof's."""
    cdef uint64_t s = state
    cdef uint32_t v = cheaprand(&s)
    return s, v


def c_fastexprand(int64_t mean, uint32_t u):
    return fastexprand(mean, u)


def c_next_sample_nofp(int64_t rate, uint32_t u):
    return nextSampleNoFP(rate, u)


def set_sampler(Heap heap, str kind="exponential", seed=None):
    """Choose the heap's sampler ('exponential': fastexprand, Go's;
    'uniform': nextSampleNoFP) and, with a seed, reseed the calling
    thread's cache so that a test's samples are repeatable; the cache's
    countdown is drawn again."""
    cdef mheap* h = heapOf(heap)
    cdef mcache* c
    if kind not in ("exponential", "uniform"):
        raise ValueError(kind)
    h.sampler = 1 if kind == "uniform" else 0
    c = getmcacheGIL(h)
    armCache(h, c)
    if seed is not None:
        c.rand = <uint64_t>seed
        c.nextSample = nextSample(h, c, c.memProfRate)
        c.eventArmed = c.nextEvent = c.nextSample if c.memProfRate else (1 << 30)


def sample_intervals(Heap heap, Py_ssize_t n):
    """n intervals drawn by the heap's sampler from the calling thread's
    cache (its random state moves on)."""
    cdef mheap* h = heapOf(heap)
    cdef mcache* c = getmcacheGIL(h)
    return [nextSample(h, c, <int64_t>h.profileRate) for _ in range(n)]


from pyarena._types cimport pyarena_allocator

cdef extern from "pyarena_sanitize.h" nogil:
    void memRaw "pyarena_mem_raw"(uintptr_t p, size_t n, const void* src, void* dst)
    int sanitizerFlags "pyarena_sanitizer_flags"()


def sanitizers():
    """The sanitizers pyarena was built for: {"address": bool, "valgrind": bool}."""
    cdef int f = sanitizerFlags()
    return {"address": bool(f & 1), "valgrind": bool(f & 2)}


def poke(uintptr_t addr, const unsigned char[:] data):
    """Write data at addr as a wild write would, past the sanitizers (for
    tests of the debug heap's own reports): ctypes.memset there is stopped
    by AddressSanitizer in an ASAN build, as it should be."""
    if data.shape[0]:
        memRaw(addr, data.shape[0], &data[0], NULL)


def peek(uintptr_t addr, size_t n):
    """n bytes at addr, read past the sanitizers (see poke)."""
    out = bytearray(n)
    cdef unsigned char[:] v = out
    if n:
        memRaw(addr, n, NULL, &v[0])
    return bytes(out)


def capi_malloc(Heap heap not None, size_t size, Py_ssize_t n, bint nogil=True):
    """n allocations of size bytes through the heap's C-level table, made
    with the GIL released (nogil) or held; their addresses (0 for a failed
    one). Free them with capi_free."""
    cdef const pyarena_allocator* t = heap._capi
    cdef uintptr_t* out = <uintptr_t*>calloc(n if n > 0 else 1, sizeof(uintptr_t))
    cdef Py_ssize_t i
    if out == NULL:
        raise MemoryError()
    try:
        if nogil:
            with nogil:
                for i in range(n):
                    out[i] = <uintptr_t>t.malloc(t.ctx, size)
        else:
            for i in range(n):
                out[i] = <uintptr_t>t.malloc(t.ctx, size)
        return [out[i] for i in range(n)]
    finally:
        free(out)


def capi_free(Heap heap not None, addrs):
    """Free addresses capi_malloc returned, through the same table."""
    cdef const pyarena_allocator* t = heap._capi
    for a in addrs:
        t.free(t.ctx, <void*><uintptr_t>a)


# -- clearing ahead of time (_mzero) ----------------------------------------

from pyarena._mzero cimport (zeroWorkerInfo, prezeroDefault, dirtyRegions, pageRegion,
                             zeroSetIdle)


def zero_worker():
    """The zeroing worker's state: dict(running, sleeping, wakeups, idle)."""
    cdef int running, sleeping, idle
    cdef uint64_t wakeups
    zeroWorkerInfo(&running, &sleeping, &wakeups, &idle)
    return dict(running=bool(running), sleeping=bool(sleeping), wakeups=wakeups,
                idle=bool(idle))


def prezero_default():
    """Whether new heaps clear ahead of time when nothing says otherwise."""
    return prezeroDefault()


def dirty_regions(uintptr_t a, uintptr_t b):
    """The page tables' view of [a, b) (page-aligned): a list of (start,
    end) runs that may hold data, or None when the kernel cannot tell."""
    cdef pageRegion regs[64]
    cdef uintptr_t walk
    cdef long k, i
    out = []
    while a < b:
        k = dirtyRegions(a, b, regs, 64, &walk)
        if k < 0:
            return None
        for i in range(k):
            out.append((<uintptr_t>regs[i].start, min(<uintptr_t>regs[i].end, walk)))
        a = walk
    return out


def zero_queue(Heap heap not None):
    """The heap's zeroing queue: a list of (start, pages, bytes cleared
    ahead), oldest first, and whether prezero is on."""
    cdef mheap* h = heap.h
    cdef mspan* s
    if h == NULL:
        return [], False
    out = []
    s = h.zero.queue.first
    while s != NULL:
        out.append((s.startAddr, s.npages, s.zeroed))
        s = s.next
    return out, bool(h.zero.on)


def set_zero_idle(verdict):
    """Make the zeroing worker's idle-core test say True or False, or look
    at the machine again (None)."""
    zeroSetIdle(-1 if verdict is None else (1 if verdict else 0))


def capi_calloc(Heap heap not None, size_t size):
    """One calloc(1, size) through the heap's C-level table, made without
    the GIL; its address (0 if it failed). Free it with capi_free."""
    cdef const pyarena_allocator* t = heap._capi
    cdef uintptr_t p
    with nogil:
        p = <uintptr_t>t.calloc(t.ctx, 1, size)
    return p


# -- the pacer and the limits (_mgcpacer) ------------------------------------

from pyarena._mgcpacer cimport requestGC


def heap_serial(Heap heap not None):
    """The heap's serial number (what a paced collection's pending call
    names it by)."""
    return heapOf(heap).serial


def request_gc_and_close(Heap heap not None):
    """Queue a paced collection for the heap and close it, with no Python
    bytecode in between (so the pending call cannot run before the close
    has begun); the heap's serial."""
    cdef mheap* h = heapOf(heap)
    cdef uint64_t serial = h.serial
    requestGC(h)
    heap.close()
    return serial


def persistent_chunk(Heap heap not None):
    """The address of the heap's newest persistent metadata chunk (0 if
    none)."""
    return <uintptr_t>heapOf(heap).persistent.chunks
