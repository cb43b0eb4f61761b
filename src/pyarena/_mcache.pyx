# cython: language_level=3
"""Per-thread caches (Go: mcache.go), and the registry of live heaps the
caches need. See _malloc.pyx for an overview.

Go gives each P an mcache. pyarena gives each thread one per heap it
allocates from. The cache holds, per size class, the span it allocates
from now, the current tiny block and the thread's large spare (the last
large object it freed, up to 4 MiB, kept for the next one of its size).
Only its own thread touches it, so allocation from it takes no lock, with
or without the GIL.

Finding the cache (getmcache, inline in _mcache.pxd) hashes the thread
pointer into the heap's tcache slots and checks the cache's owner: no
thread-local table in any module, so every module that allocates shares
one lookup and nothing has to be told when a thread's caches go. A miss
goes to getmcacheSlow, which finds or makes the cache through this
thread's list of caches (thread-local storage of this module) and installs
it in its slot.

When a cached span has no free slot left, refill sweeps it in place if at
least an eighth of it was freed meanwhile (by this thread, without atomics,
or by others), and otherwise hands it back to mcentral, where frees can
pile up, and takes another.

A Python thread hands its caches back when its thread state is cleared
(_ThreadEnd, before join() returns); a thread may also end without ever
holding the GIL (an OpenMP worker of a prange): a pthread key destructor
hands its caches back when it exits. Either way only the caches of heaps
that still exist are touched: the registry of live heaps says which do, and
a heap leaves it (releaseHeap) before it is unmapped. A heap that died took
its caches with it.
"""

cimport cython
from libc.stdint cimport uintptr_t, uint64_t, int32_t, int64_t
from libc.stdlib cimport malloc as c_malloc, free as c_free
from pyarena._types cimport (mheap, mcache, mspan, mSpanDead, NUM_SIZE_CLASSES, inNoList,
                             inSpare, TINY_SIZE_CLASS, TCACHE_SLOTS, PAGE_SHIFT, pa_mutex,
                             pa_mutex_init, pa_lock, pa_unlock, pa_add64, pa_addu8, pa_load32)
from pyarena._mfixalloc cimport fixalloc_alloc, fixalloc_free
from pyarena._mspan cimport nextFreeIndex, sweep, objIndex, freeSlotLocal
from pyarena._mcentral cimport cacheSpan, uncacheSpan, freeSlot
from pyarena._mheap cimport allocSpan, freeSpan, mheap_destroy
from pyarena._mcache cimport threadSelf, tcacheSlot
from pyarena._mprof cimport armCache, countAlloc, mprofDestroy
from pyarena._mgcpacer cimport chargeCredit
from pyarena._mzero cimport zeroTake, zeroDisable
from pyarena._types cimport ZERO_MIN_PAGES

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned int pthread_key_t
    int pthread_key_create(pthread_key_t* key, void (*destructor)(void*) noexcept nogil)
    int pthread_setspecific(pthread_key_t key, const void* value)
    int pthread_atfork(void (*prepare)() noexcept nogil, void (*parent)() noexcept nogil,
                       void (*child)() noexcept nogil)

cdef extern from *:
    """
    /* This thread's caches, listed for the thread-exit hand-back.
       initial-exec TLS: a load relative to the thread pointer, no
       __tls_get_addr call. */
    typedef struct pyarena_tcnode {
        struct pyarena_tcnode *next;
        unsigned long long serial;
        void *heap;
        void *cache;
    } pyarena_tcnode;
    static __thread __attribute__((tls_model("initial-exec")))
        pyarena_tcnode *pyarena_tls_nodes;
    """
    ctypedef struct pyarena_tcnode:
        pyarena_tcnode* next
        unsigned long long serial
        void* heap
        void* cache
    pyarena_tcnode* tls_nodes "pyarena_tls_nodes"
    bint casPtr "__sync_bool_compare_and_swap"(void** p, void* old, void* new) noexcept nogil
    void storeRelaxed "__atomic_store_n"(void** p, void* v, int order) noexcept nogil
    int RELAXED "__ATOMIC_RELAXED"


# The span every empty cache entry points at (Go: emptymspan): no slots, so
# nextFreeFast fails on it and the slow path refills, with no NULL checks on
# the fast path. Its state is mSpanDead, which refill uses to recognise it.
cdef mspan emptymspan

cdef pthread_key_t _exitKey


# ---------------------------------------------------------------------------
# The registry of live heaps: a thread that ends (possibly without the GIL)
# must know whether the heaps it has caches of still exist. A heap joins when
# it is made and leaves before it is unmapped. Taken before any heap or
# central lock, never inside one.

cdef pa_mutex _registry
cdef mheap* _liveHeaps = NULL
# Every heap gets a serial number never reused in the process: a thread's
# node for a dead heap can never match a live one.
cdef uint64_t _nextSerial = 1
pa_mutex_init(&_registry)


cdef void registerHeap(mheap* h) noexcept nogil:
    """Give a new heap (mheap_new) its serial and make it live."""
    global _liveHeaps, _nextSerial
    pa_lock(&_registry)
    h.serial = _nextSerial
    _nextSerial += 1
    h.regNext = _liveHeaps
    h.regPrev = NULL
    if _liveHeaps != NULL:
        _liveHeaps.regPrev = h
    _liveHeaps = h
    pa_unlock(&_registry)


cdef void releaseHeap(mheap* h) noexcept:
    """Drop one reference to h (the Heap object's, or its NumPy handler
    capsule's; GIL held); the last one takes h out of the registry, so that
    no ending thread looks at its caches any more, and destroys it."""
    global _liveHeaps
    h.refs -= 1
    if h.refs != 0:
        return
    pa_lock(&_registry)
    if h.regPrev != NULL:
        h.regPrev.regNext = h.regNext
    else:
        _liveHeaps = h.regNext
    if h.regNext != NULL:
        h.regNext.regPrev = h.regPrev
    pa_unlock(&_registry)
    zeroDisable(h)          # the zeroing worker out of its memory first
    mprofDestroy(h)
    mheap_destroy(h)


cdef int liveHeaps(mheap** out, int n) noexcept nogil:
    """Up to n live heaps into out; how many there are. The heaps stay
    alive only while the caller holds the GIL (a heap dies with the GIL
    held, in releaseHeap)."""
    cdef mheap* h
    cdef int k = 0
    pa_lock(&_registry)
    h = _liveHeaps
    while h != NULL:
        if k < n:
            out[k] = h
        k += 1
        h = h.regNext
    pa_unlock(&_registry)
    return k


cdef mheap* registryFind(uint64_t serial) noexcept nogil:
    """The live heap with this serial, or NULL. Registry lock held."""
    cdef mheap* h = _liveHeaps
    while h != NULL:
        if h.serial == serial:
            return h
        h = h.regNext
    return NULL


cdef void atforkPrepare() noexcept nogil:
    """Before fork(): take every allocator lock (registry, then each heap's
    centrals, then its page heap: the usual order), so that no other
    thread is inside the allocator when the address space is copied; the
    child would otherwise inherit a lock nobody will release."""
    cdef mheap* h
    cdef int i
    pa_lock(&_registry)
    h = _liveHeaps
    while h != NULL:
        for i in range(NUM_SIZE_CLASSES):
            pa_lock(&h.central[i].lock)
        pa_lock(&h.lock)
        h = h.regNext


cdef void atforkParent() noexcept nogil:
    """After fork(), in the parent: let go of them."""
    cdef mheap* h = _liveHeaps
    cdef int i
    while h != NULL:
        pa_unlock(&h.lock)
        for i in range(NUM_SIZE_CLASSES - 1, -1, -1):
            pa_unlock(&h.central[i].lock)
        h = h.regNext
    pa_unlock(&_registry)


cdef void atforkChild() noexcept nogil:
    """After fork(), in the child: the locks, and every lookup slot of a
    thread that does not exist here. A new thread of the child may get the
    thread pointer of one of them; its slot must not hand it their cache.
    Their caches stay allocated (their spans are lost to the child)."""
    cdef mheap* h = _liveHeaps
    cdef uintptr_t me = threadSelf()
    cdef mcache* c
    cdef int i
    while h != NULL:
        for i in range(TCACHE_SLOTS):
            c = h.tcache[i]
            if c != NULL and c.owner != me:
                h.tcache[i] = NULL
        # Their spans are nobody's to free into without atomics.
        c = h.caches
        while c != NULL:
            if c.owner != me:
                for i in range(NUM_SIZE_CLASSES):
                    if c.alloc[i].state != mSpanDead:
                        c.alloc[i].ownerThread = 0
            c = c.next
        h = h.regNext
    atforkParent()


pthread_atfork(atforkPrepare, atforkParent, atforkChild)


# ---------------------------------------------------------------------------
# Caches


cdef mcache* allocmcache(mheap* h) noexcept nogil:
    """A new cache of h linked into h.caches, or NULL without memory."""
    cdef mcache* c
    cdef int i
    pa_lock(&h.lock)
    c = <mcache*>fixalloc_alloc(&h.cachealloc)
    if c != NULL:
        c.heap = h
        c.owner = threadSelf()
        c.spanOwner = 0 if h.debug else c.owner
        armCache(h, c)
        for i in range(NUM_SIZE_CLASSES):
            c.alloc[i] = &emptymspan
        c.next = h.caches
        c.prev = NULL
        if h.caches != NULL:
            h.caches.prev = c
        h.caches = c
    pa_unlock(&h.lock)
    return c


cdef void* allocTinyRefs(mheap* h) noexcept nogil:
    cdef void* p
    pa_lock(&h.lock)
    p = fixalloc_alloc(&h.tinyrefalloc)
    pa_unlock(&h.lock)
    return p


cdef void releaseTiny(mcache* c) noexcept nogil:
    """Drop the cache's own reference to its tiny block."""
    cdef mspan* s = c.tinyspan
    cdef unsigned int idx
    if c.tiny == 0:
        return
    idx = <unsigned int>objIndex(s, c.tiny)
    c.tiny = 0
    c.tinyoffset = 0
    c.tinyspan = NULL
    if pa_addu8(&s.tinyRefs[idx], -1) == 0:
        c.freedBytes += s.elemsize
        if c.alloc[TINY_SIZE_CLASS] == s:
            freeSlotLocal(s, idx)
        else:
            freeSlot(c.heap, s, idx)


cdef mspan* allocLarge(mcache* c, uintptr_t npages) noexcept nogil:
    """A span of its own for one large object (Go: mcache.allocLarge): the
    cache's large spare when it has the size, else a span of that size
    from the heap's zeroing queue (_mzero), else from the page heap. A
    fresh span's scav bits say which pages still read as zero; a spare's
    pages are all dirty (freshindex 1), and a queued span's too but for
    the s.zeroed bytes cleared ahead of time. See _malloc.clearLarge."""
    cdef mspan* s = c.largeSpare
    if s != NULL and s.npages == npages:
        c.largeSpare = NULL
        pa_add64(&c.heap.pagesSpare, -npages)
        s.list = inNoList
        s.freeBits[0] = 0
        s.needzero = 1
        s.zeroed = 0
    else:
        s = NULL
        if npages >= ZERO_MIN_PAGES and c.heap.zero.on:
            s = zeroTake(c.heap, npages)
        if s != NULL:
            s.freeBits[0] = 0
            s.needzero = 1
        else:
            s = allocSpan(c.heap, npages, 0)
            if s == NULL:
                return NULL
    s.allocCount = 1
    s.freeindex = 1
    c.nmalloc[0] += 1
    c.allocBytes += npages << PAGE_SHIFT
    countAlloc(c, s.startAddr, npages << PAGE_SHIFT, s)
    chargeCredit(c, npages << PAGE_SHIFT)
    return s


cdef void keepLargeSpare(mcache* c, mspan* s) noexcept nogil:
    """Keep the freed large span s as c's large spare (the previous spare
    goes back to the page heap). Its pages count as idle."""
    cdef mspan* old = c.largeSpare
    s.list = inSpare
    s.freshindex = 1
    pa_add64(&c.heap.pagesSpare, s.npages)
    c.largeSpare = s
    if old != NULL:
        pa_add64(&c.heap.pagesSpare, -old.npages)
        old.list = inNoList
        freeSpan(c.heap, old)


cdef void dropLargeSpare(mcache* c) noexcept nogil:
    """Give the cache's large spare back to the page heap."""
    cdef mspan* s = c.largeSpare
    if s == NULL:
        return
    c.largeSpare = NULL
    pa_add64(&c.heap.pagesSpare, -s.npages)
    s.list = inNoList
    freeSpan(c.heap, s)


cdef void releaseAll(mcache* c) noexcept nogil:
    """Give every cached span, the large spare and the tiny block back (Go:
    mcache.releaseAll)."""
    cdef int i
    cdef mspan* s
    releaseTiny(c)
    dropLargeSpare(c)
    for i in range(NUM_SIZE_CLASSES):
        s = c.alloc[i]
        if s.state != mSpanDead:
            uncacheSpan(c.heap, s)
        c.alloc[i] = &emptymspan


cdef void freemcache(mcache* c) noexcept nogil:
    """Release everything and free the cache; its counts go to the heap
    (Go: freemcache, when a P is destroyed)."""
    cdef mheap* h = c.heap
    cdef int i
    releaseAll(c)
    # Forget the lookup slot before the record can be reused (only this
    # thread ever installs its cache there, so nobody races the clear but
    # another thread overwriting the slot with its own, which stays).
    casPtr(<void**>&h.tcache[tcacheSlot(c.owner)], c, NULL)
    pa_lock(&h.lock)
    for i in range(NUM_SIZE_CLASSES):
        h.retiredMalloc[i] += c.nmalloc[i]
        h.retiredFree[i] += c.nfree[i]
    h.retiredAllocBytes += c.allocBytes
    h.retiredFreedBytes += c.freedBytes
    if c.prev != NULL:
        c.prev.next = c.next
    else:
        h.caches = c.next
    if c.next != NULL:
        c.next.prev = c.prev
    fixalloc_free(&h.cachealloc, c)
    pa_unlock(&h.lock)


cdef void threadExit(void* unused) noexcept nogil:
    """pthread key destructor: this thread is ending."""
    releaseThreadCaches()


cdef void releaseThreadCaches() noexcept nogil:
    """Give back the calling thread's caches of heaps that still exist, and
    forget the rest: the thread is ending (the pthread key destructor, or,
    for a Python thread, earlier: when its thread state is cleared, before
    join() returns). The thread may allocate again afterwards; it then gets
    new caches."""
    global tls_nodes
    cdef pyarena_tcnode* n = tls_nodes
    cdef pyarena_tcnode* nxt
    cdef mheap* h
    tls_nodes = NULL
    while n != NULL:
        nxt = n.next
        pa_lock(&_registry)
        h = registryFind(n.serial)
        if h != NULL and <void*>h == n.heap:
            freemcache(<mcache*>n.cache)
        pa_unlock(&_registry)
        c_free(n)
        n = nxt


cdef mcache* findmcache(mheap* h) noexcept nogil:
    """The calling thread's cache of h from its list, installed in its
    lookup slot again (another thread's may have taken the slot); NULL if it
    has none."""
    cdef pyarena_tcnode* n = tls_nodes
    cdef mcache* c
    while n != NULL:
        if n.serial == h.serial:
            c = <mcache*>n.cache
            if not h.debug:         # see getmcacheSlow
                storeRelaxed(<void**>&h.tcache[tcacheSlot(c.owner)], c, RELAXED)
            return c
        n = n.next
    return NULL


cdef mcache* getmcacheSlow(mheap* h) noexcept nogil:
    """getmcache's miss: the calling thread's cache of h from its list, or
    a new one; NULL without memory. Any thread, GIL or not."""
    global tls_nodes
    cdef pyarena_tcnode* n
    cdef mcache* c = findmcache(h)
    if c != NULL:
        return c
    # New. A new cache also prunes the nodes of dead heaps (a heap's serial
    # is in the registry while it lives).
    c = allocmcache(h)
    if c == NULL:
        return NULL
    n = <pyarena_tcnode*>c_malloc(sizeof(pyarena_tcnode))
    if n == NULL:
        freemcache(c)
        return NULL
    n.serial = h.serial
    n.heap = h
    n.cache = c
    n.next = tls_nodes
    pthread_setspecific(_exitKey, <void*>1)
    tls_nodes = n
    pruneDead()
    # A debug heap's caches stay out of the lookup slots: every allocation
    # misses there and takes the slow path, where the debug heap is
    # (_mdebug), so the fast paths test nothing for it.
    if not h.debug:
        storeRelaxed(<void**>&h.tcache[tcacheSlot(c.owner)], c, RELAXED)
    return c


# A Python thread's end, seen from Python: an instance lives in a
# threading.local, which Python clears with the thread's state, before
# join() returns (the pthread key destructor runs later).
cdef extern from *:
    """
    static __thread __attribute__((tls_model("initial-exec"))) int pyarena_thread_hooked;
    """
    int thread_hooked "pyarena_thread_hooked"


@cython.final
@cython.binding(False)
cdef class _ThreadEnd:
    """Dropped when its thread's state is cleared: the thread's caches go
    back then, so a joined thread has given them back already."""

    def __dealloc__(self):
        releaseThreadCaches()


import threading
_threadEnd = threading.local()


cdef mcache* getmcacheHooked(mheap* h) except NULL:
    """getmcacheGIL's miss (GIL held): getmcacheSlow, and a Python thread's
    first cache hooks the thread's end."""
    global thread_hooked
    cdef mcache* c = getmcacheSlow(h)
    if c == NULL:
        raise MemoryError("cannot allocate a thread cache")
    if not thread_hooked:
        thread_hooked = 1
        _threadEnd.hook = _ThreadEnd()
    return c


cdef void pruneDead() noexcept nogil:
    """Drop this thread's nodes for heaps that no longer exist."""
    cdef pyarena_tcnode** link = &tls_nodes
    cdef pyarena_tcnode* n
    pa_lock(&_registry)
    n = link[0]
    while n != NULL:
        if registryFind(n.serial) == NULL:
            link[0] = n.next
            c_free(n)
        else:
            link = &n.next
        n = link[0]
    pa_unlock(&_registry)


cdef mspan* refill(mcache* c, int sizeclass) noexcept nogil:
    """Make c.alloc[sizeclass] a span with a free slot; NULL when there is no
    memory for one (Go: mcache.refill)."""
    cdef mspan* s = c.alloc[sizeclass]
    cdef int32_t nfreed
    if s.state != mSpanDead:
        # Sweep in place when enough of the span came free (an eighth):
        # sweeping for a slot or two at a time would cost more than it
        # gives. Otherwise the span goes to the back of the partial list,
        # where frees can pile up while other spans are used.
        nfreed = pa_load32(&s.nfreed) + s.nfreedLocal
        if nfreed > 0 and <unsigned int>nfreed * 8 >= s.nelems:
            sweep(s)
            pa_add64(&c.heap.nsweeps, 1)
            if s.allocCount < s.nelems:
                if pa_load32(&s.nsampled) == 0:
                    s.ownerThread = c.spanOwner     # its samples died: local frees again
                return s
        uncacheSpan(c.heap, s)
        c.alloc[sizeclass] = &emptymspan
    s = cacheSpan(c.heap, sizeclass)
    if s == NULL:
        return NULL
    s.cache = c
    # A span with sampled objects alive is freed into out of line (_mprof),
    # and so is every span of a debug heap (_mdebug).
    s.ownerThread = c.spanOwner if pa_load32(&s.nsampled) == 0 else 0
    c.alloc[sizeclass] = s
    return s


cdef uintptr_t nextFree(mcache* c, int sizeclass) noexcept nogil:
    """The slow path of nextFreeFast: the next free slot of the cached span,
    refilling the cache when the span is full; 0 without memory (Go:
    mcache.nextFree)."""
    cdef mspan* s = c.alloc[sizeclass]
    cdef unsigned int idx = nextFreeIndex(s)
    while idx == s.nelems:
        # refill returns a span with a free slot (cacheSpan checks).
        s = refill(c, sizeclass)
        if s == NULL:
            return 0
        # The span's free slots, charged now (Go: refill adds them to
        # heapLive at once).
        chargeCredit(c, <int64_t>(s.nelems - s.allocCount) * <int64_t>s.elemsize)
        idx = nextFreeIndex(s)
    s.allocCount += 1
    return s.startAddr + <uintptr_t>idx * s.elemsize


pthread_key_create(&_exitKey, threadExit)
