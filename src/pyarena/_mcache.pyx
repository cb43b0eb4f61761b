# cython: language_level=3
"""Per-thread caches (Go: mcache.go). See _malloc.pyx for an overview.

Go gives each P an mcache. pyarena gives each thread one per heap it
allocates from (getmcacheSlow makes and lists them; _heap keeps a small
direct-mapped table in thread-local storage in front, keyed by the heap's
serial number, never reused, so an entry of a dead heap can never match).
The cache holds, per size class, the span it
allocates from, and the current tiny block. Only its own thread touches
it, so allocation from it takes no lock, with or without the GIL.

When a cached span has no free slot left, refill sweeps it in place if at
least an eighth of it was freed meanwhile (by this thread, without atomics,
or by others), and otherwise hands it back to mcentral, where frees can
pile up, and takes another.

A Python thread hands its caches back when its thread state is cleared
(_heap's _ThreadEnd); a thread may also end without ever holding the GIL
(an OpenMP worker of a prange). Its caches are listed in thread-local
storage and a pthread key destructor hands them back when the thread exits, for each heap that still
exists: the registry of live heaps (_mheap.pyx) says which do. A heap that
died took its caches with it.
"""

from libc.stdint cimport uintptr_t, int32_t
from libc.stdlib cimport malloc as c_malloc, free as c_free
from pyarena._types cimport (mheap, mcache, mspan, mSpanDead, NUM_SIZE_CLASSES, inNoList,
                             TINY_SIZE_CLASS, pa_lock, pa_unlock, pa_add64, pa_addu8,
                             pa_load32)
from pyarena._mfixalloc cimport fixalloc_alloc, fixalloc_free
from pyarena._mspan cimport nextFreeIndex, sweep, objIndex
from pyarena._mcentral cimport cacheSpan, uncacheSpan, freeSlot, freeSlotLocal
from pyarena._mheap cimport registryLock, registryUnlock, registryFind, freeSpan

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned int pthread_key_t
    int pthread_key_create(pthread_key_t* key, void (*destructor)(void*) noexcept nogil)
    int pthread_setspecific(pthread_key_t key, const void* value)

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


# The span every empty cache entry points at (Go: emptymspan): no slots, so
# nextFreeFast fails on it and the slow path refills, with no NULL checks on
# the fast path. Its state is mSpanDead, which refill uses to recognise it.
cdef mspan emptymspan

cdef pthread_key_t _exitKey


cdef mcache* allocmcache(mheap* h) noexcept nogil:
    """A new cache of h linked into h.caches, or NULL without memory."""
    cdef mcache* c
    cdef int i
    pa_lock(&h.lock)
    c = <mcache*>fixalloc_alloc(&h.cachealloc)
    if c != NULL:
        c.heap = h
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


# Other modules' copies of the lookup table (the hot paths in _heap keep
# one) register a function here to forget their entries when this thread's
# caches go.
cdef void (*_forgetHooks[4])() noexcept nogil
cdef int _nforgetHooks = 0


cdef void onThreadCachesReleased(void (*hook)() noexcept nogil) noexcept nogil:
    global _nforgetHooks
    if _nforgetHooks < 4:
        _forgetHooks[_nforgetHooks] = hook
        _nforgetHooks += 1


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
    cdef int k
    tls_nodes = NULL
    for k in range(_nforgetHooks):
        _forgetHooks[k]()
    while n != NULL:
        nxt = n.next
        registryLock()
        h = registryFind(n.serial)
        if h != NULL and <void*>h == n.heap:
            freemcache(<mcache*>n.cache)
        registryUnlock()
        c_free(n)
        n = nxt


cdef mcache* getmcacheSlow(mheap* h) noexcept nogil:
    """The calling thread's cache of h, made on first use; NULL without
    memory. Any thread, GIL or not. Callers keep their own lookup table in
    front of it (_heap's), and register a hook to forget it
    (onThreadCachesReleased)."""
    global tls_nodes
    cdef pyarena_tcnode* n = tls_nodes
    cdef mcache* c = NULL
    # Evicted from the caller's table, or new. A new cache prunes the nodes
    # of dead heaps (a heap's serial is in the registry while it lives).
    while n != NULL:
        if n.serial == h.serial:
            c = <mcache*>n.cache
            break
        n = n.next
    if c == NULL:
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
    return c


cdef void pruneDead() noexcept nogil:
    """Drop this thread's nodes for heaps that no longer exist."""
    cdef pyarena_tcnode** link = &tls_nodes
    cdef pyarena_tcnode* n
    registryLock()
    n = link[0]
    while n != NULL:
        if registryFind(n.serial) == NULL:
            link[0] = n.next
            c_free(n)
        else:
            link = &n.next
        n = link[0]
    registryUnlock()


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
                return s
        uncacheSpan(c.heap, s)
        c.alloc[sizeclass] = &emptymspan
    s = cacheSpan(c.heap, sizeclass)
    if s == NULL:
        return NULL
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
        idx = nextFreeIndex(s)
    s.allocCount += 1
    return s.startAddr + <uintptr_t>idx * s.elemsize


pthread_key_create(&_exitKey, threadExit)
