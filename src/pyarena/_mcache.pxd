# Per-thread span caches (Go: mcache.go). See _mcache.pyx.
from libc.stdint cimport uintptr_t, uint64_t
from pyarena._types cimport mheap, mcache, mspan

cdef extern from *:
    """
    /* getmcache's key: the thread pointer (%fs:0 on x86-64, tpidr_el0 on
       arm64). It is unique among live threads and the same value in every
       pyarena module, which a `static __thread` variable would not be (each
       extension module has its own copy), so the lookup needs no
       thread-local table per module and no hook to forget one. A later
       thread may get the pointer of one that ended: its caches were given
       back and their slots cleared before it ended (releaseThreadCaches). */
    #if defined(__has_builtin)
    #  if __has_builtin(__builtin_thread_pointer)
    #    define PYARENA_HAVE_THREAD_POINTER 1
    #  endif
    #endif
    #ifdef PYARENA_HAVE_THREAD_POINTER
    static inline uintptr_t pyarena_thread_self(void)
    { return (uintptr_t)__builtin_thread_pointer(); }
    #else
    #include <pthread.h>
    static inline uintptr_t pyarena_thread_self(void)
    { return (uintptr_t)pthread_self(); }
    #endif
    /* Fibonacci hashing onto TCACHE_SLOTS (64 = 1 << 6) slots: thread
       pointers differ in their high bits (one thread stack apart). */
    static inline unsigned int pyarena_tcache_slot(uintptr_t t)
    { return (unsigned int)(((unsigned long long)t * 0x9E3779B97F4A7C15ull) >> 58); }
    static inline void *pyarena_load_relaxed(void *const *p)
    { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline uintptr_t pyarena_loadu_relaxed(const uintptr_t *p)
    { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    """
    uintptr_t threadSelf "pyarena_thread_self"() noexcept nogil
    unsigned int tcacheSlot "pyarena_tcache_slot"(uintptr_t t) noexcept nogil
    void* loadRelaxed "pyarena_load_relaxed"(void** p) noexcept nogil
    uintptr_t loaduRelaxed "pyarena_loadu_relaxed"(uintptr_t* p) noexcept nogil

# The registry of live heaps and heap lifetime.
cdef void registerHeap(mheap* h) noexcept nogil
cdef void releaseHeap(mheap* h) noexcept
cdef int liveHeaps(mheap** out, int n) noexcept nogil

# Caches.
cdef mcache* getmcacheSlow(mheap* h) noexcept nogil
cdef mcache* findmcache(mheap* h) noexcept nogil
cdef mcache* getmcacheHooked(mheap* h) except NULL
cdef void releaseThreadCaches() noexcept nogil
cdef void releaseAll(mcache* c) noexcept nogil
cdef void releaseTiny(mcache* c) noexcept nogil
cdef mspan* refill(mcache* c, int sizeclass) noexcept nogil
cdef uintptr_t nextFree(mcache* c, int sizeclass) noexcept nogil
cdef void* allocTinyRefs(mheap* h) noexcept nogil

# Large objects and the large spare.
cdef mspan* allocLarge(mcache* c, uintptr_t npages) noexcept nogil
cdef void keepLargeSpare(mcache* c, mspan* s) noexcept nogil
cdef void dropLargeSpare(mcache* c) noexcept nogil


cdef inline mcache* lookupmcache(mheap* h) noexcept nogil:
    """The calling thread's cache of h if its lookup slot holds it, else
    NULL: one load of the thread pointer, one of the slot, one compare. The
    slot may hold another thread's cache (a hash collision) or a freed
    record, and owner tells them apart."""
    cdef uintptr_t me = threadSelf()
    cdef mcache* c = <mcache*>loadRelaxed(<void**>&h.tcache[tcacheSlot(me)])
    if c != NULL and loaduRelaxed(&c.owner) == me:
        return c
    return NULL


cdef inline mcache* getmcache(mheap* h) noexcept nogil:
    """The calling thread's cache of h, made on first use; NULL without
    memory (Go: getMCache)."""
    cdef mcache* c = lookupmcache(h)
    return c if c != NULL else getmcacheSlow(h)


cdef inline mcache* peekmcache(mheap* h) noexcept nogil:
    """The calling thread's cache of h if it has one, else NULL; never
    makes one (the free paths: a thread that only frees needs no cache)."""
    cdef mcache* c = lookupmcache(h)
    return c if c != NULL else findmcache(h)


cdef inline mcache* getmcacheGIL(mheap* h) except NULL:
    """getmcache for callers holding the GIL: MemoryError without memory,
    and a Python thread's first cache hooks the thread's end, so that its
    caches go back before join() returns (see _ThreadEnd)."""
    cdef mcache* c = lookupmcache(h)
    return c if c != NULL else getmcacheHooked(h)
