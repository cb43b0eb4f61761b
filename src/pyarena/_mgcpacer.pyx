# cython: language_level=3
"""Memory under pressure: a GOGC pacer for Python's collector, the memory
limit and the hard cap, and the background scavenger (Go: mgcpacer.go,
mgcscavenge.go, and deductAssistCredit in malloc.go). See _malloc.pyx for
the allocator's overview.

Why. Python's cyclic collector is paced by object counts, not bytes: a
NumPy array held by a reference cycle is freed only when a collection
happens to run, and a loop that makes a cycle around a 64 MiB array per
step can hold gigabytes before one does. A heap knows its bytes, so it can
pace the collector the way Go paces its own.

The pacer (Heap(gogc=N)). After a collection the heap measures its live
bytes (heap_alloc, heapMarked) and sets the next goal, heapMarked * (1 +
N/100), at least the floor 4 MiB * N/100 (Go: heapMinimum). Allocating
threads pay for watching it as goroutines pay assist credit: each mcache
holds a byte credit that the slow paths charge (chargeCredit, inline in
_mgcpacer.pxd: a span cached for its free slots, a large object), so the
fast path never sees it. When a thread's credit runs out it looks
(paceCheck): past the goal, it requests a collection and gets a credit of
half the remaining way to the goal, at least 256 KiB. The request is a
Py_AddPendingCall, at most one queued per heap (pacer.pending), made with
no allocator lock held: the interpreter runs it at its next safe point, in
the main thread, with the GIL, never inside the allocator. The pending
call names its heap by serial number, not by pointer, so a heap closed or
gone before it runs is simply not found (or found closed) and nothing
happens. It runs gc.collect() (even when gc is disabled: gogc=None is how
the pacer is turned off), measures heap_alloc and sets the next goal.

The memory limit (Heap(memory_limit=N), Go's GOMEMLIMIT) is soft and
lives in the page heap (_mheap.underLimits): when a span would bring
pagesMapped - pagesReleased (retained, Go's heapRetained) past it, the
allocating thread first releases idle pages for the excess, largest free
runs first, so it pays in proportion to what it allocates; with gogc set,
paceCheck also requests a collection when retained nears the limit and
the heap has grown since the last one. No allocation fails because of it:
live memory above the limit is allowed. The hard cap (Heap(max_bytes=N))
is the same test with a refusal at the end: if the span does not fit
after releasing everything free, allocation fails (MemoryError, NULL).

The background scavenger (Go: bgscavenge) is one native thread for the
process, started when a heap asks (Heap(scavenge=True), or a limit set):
every SCAV_PERIOD_MS it advances each heap's generation and releases up to
SCAV_PAGES dirty free pages of runs freed at least SCAV_MIN_AGE
generations ago (any free run while retained is over 95% of the memory
limit: Go's memory-limit goal); a heap's zeroing queue (_mzero) that
nothing joined for a second is flushed to the page heap first, so that
its spans age like any free run. It never holds the GIL and never touches
a Python object; close() takes a heap out of its sight (waiting while it
is inside that heap), and an atexit hook stops it. It is detached: it
never keeps the interpreter from exiting.

Locks: the pacer's fields are written under mheap.lock, or atomically
(pending, triggered). The scavenger's list and state are under slock, a
leaf lock never held while a heap lock is taken.
"""

from libc.stdint cimport int64_t, uint64_t, uint32_t, int32_t, uintptr_t
from pyarena._types cimport mheap, mcache, PAGE_SHIFT, pa_lock, pa_unlock, pa_load64, pa_add64
from pyarena._mheap cimport scavengeLocked
from pyarena._mzero cimport zeroFlushIdle

cdef extern from "Python.h":
    int Py_AddPendingCall(int (*func)(void*) noexcept, void* arg) noexcept nogil
    int Py_IsInitialized() noexcept nogil

cdef extern from *:
    """
    #if PY_VERSION_HEX >= 0x030D0000
    #define pyarena_finalizing() Py_IsFinalizing()
    #else
    #define pyarena_finalizing() _Py_IsFinalizing()
    #endif
    """
    int isFinalizing "pyarena_finalizing"() noexcept nogil

cdef extern from *:
    """
    static inline int pyarena_cas32(int32_t *p, int32_t old, int32_t v) {
        return __atomic_compare_exchange_n(p, &old, v, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
    static inline void pyarena_store32(int32_t *p, int32_t v) {
        __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
    }

    #include <pthread.h>
    #include <time.h>
    static pthread_mutex_t pyarena_slock = PTHREAD_MUTEX_INITIALIZER;
    static pthread_cond_t pyarena_scond;
    static void pyarena_sinit(void) {
        pthread_condattr_t a;
        pthread_condattr_init(&a);
        pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
        pthread_cond_init(&pyarena_scond, &a);
        pthread_condattr_destroy(&a);
    }
    static void pyarena_sreinit(void) {
        pthread_mutex_init(&pyarena_slock, NULL);
        pyarena_sinit();
    }
    /* Wait on the scavenger's condition, ms milliseconds at most (0: until
       signalled). */
    static void pyarena_swait(long ms) {
        struct timespec t;
        if (ms <= 0) {
            pthread_cond_wait(&pyarena_scond, &pyarena_slock);
            return;
        }
        clock_gettime(CLOCK_MONOTONIC, &t);
        t.tv_nsec += (ms % 1000) * 1000000L;
        t.tv_sec += ms / 1000 + t.tv_nsec / 1000000000L;
        t.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&pyarena_scond, &pyarena_slock, &t);
    }
    static int pyarena_scav_start(void *(*fn)(void *)) {
        pthread_t t;
        pthread_attr_t attr;
        int r;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        r = pthread_create(&t, &attr, fn, NULL);
        pthread_attr_destroy(&attr);
        return r;
    }
    """
    bint cas32 "pyarena_cas32"(int32_t* p, int32_t old, int32_t v) noexcept nogil
    void store32 "pyarena_store32"(int32_t* p, int32_t v) noexcept nogil
    void slockInit "pyarena_sinit"() noexcept nogil
    void slockReinit "pyarena_sreinit"() noexcept nogil
    void slock "pthread_mutex_lock"(void* m) noexcept nogil
    void sunlock "pthread_mutex_unlock"(void* m) noexcept nogil
    void* SLOCK "(&pyarena_slock)"
    void* SCOND "(&pyarena_scond)"
    void swait "pyarena_swait"(long ms) noexcept nogil
    void sbroadcast "pthread_cond_broadcast"(void* c) noexcept nogil
    int scavStart "pyarena_scav_start"(void* (*fn)(void*) noexcept nogil) noexcept nogil

cdef extern from "<pthread.h>" nogil:
    int pthread_atfork(void (*prepare)() noexcept nogil, void (*parent)() noexcept nogil,
                       void (*child)() noexcept nogil)

cdef enum:
    # Go: heapMinimum = defaultHeapMinimum (4 MiB) * GOGC / 100.
    HEAP_MINIMUM = 4 << 20
    # A thread's credit after a look: half the way left to the goal, within
    # these bounds. The lower one bounds how often a thread looks (a look
    # takes the heap lock to add up heap_alloc); the upper one how far past
    # the goal one thread can run before it looks.
    CREDIT_MIN = 256 << 10
    CREDIT_MAX = 64 << 20
    # The scavenger: its period, its budget per period and heap (8 MiB a
    # tenth of a second: madvise of that costs a few milliseconds, a few
    # per cent of a core), and how many periods a free run must have been
    # free before it counts as idle (1 s).
    SCAV_PERIOD_MS = 100
    SCAV_PAGES = (8 << 20) >> PAGE_SHIFT
    SCAV_MIN_AGE = 10

# A zeroing queue (_mzero) nothing was added to for this long is idle
# memory too: flushed to the page heap, where the scavenger finds it
# SCAV_MIN_AGE periods later (released pages read as zero, so the next
# zeros() of its size needs no clear either way).
cdef int64_t QUEUE_IDLE_NS = 1000000000

# What a thread's credit becomes when there is nothing to watch (no gogc):
# it never looks again (a heap's gogc is fixed when it is made).
cdef int64_t CREDIT_OFF = (<int64_t>1) << 60


# ---------------------------------------------------------------------------
# The pacer

cdef uint64_t heapAllocLocked(mheap* h) noexcept nogil:
    """heap_alloc as Heap.stats() counts it: slot bytes handed out less
    slot bytes freed, over every cache and the heap's retired counts
    (other threads' counts read as they are). Heap lock held."""
    cdef uint64_t alloc = h.retiredAllocBytes
    cdef uint64_t freed = pa_load64(&h.freedBytes) + h.retiredFreedBytes
    cdef mcache* c = h.caches
    while c != NULL:
        alloc += c.allocBytes
        freed += c.freedBytes
        c = c.next
    return alloc - freed if alloc > freed else 0


cdef uint64_t heapAllocNow(mheap* h) noexcept nogil:
    cdef uint64_t n
    pa_lock(&h.lock)
    n = heapAllocLocked(h)
    pa_unlock(&h.lock)
    return n


cdef inline uint64_t heapMinimum(mheap* h) noexcept nogil:
    return <uint64_t>HEAP_MINIMUM * <uint64_t>h.pacer.gogc // 100


cdef void setGoal(mheap* h, uint64_t marked) noexcept nogil:
    """The live bytes after a collection, and the goal that follows (Go:
    gcControllerState.heapGoal without the memory limit's part, which
    paceCheck adds). Heap lock held."""
    cdef uint64_t g = <uint64_t>h.pacer.gogc
    cdef uint64_t goal
    if g > (1 << 20):
        goal = (<uint64_t>1) << 62          # in effect never
    else:
        goal = marked + marked // 100 * g + marked % 100 * g // 100
    if goal < heapMinimum(h):
        goal = heapMinimum(h)
    h.pacer.heapMarked = marked
    h.pacer.nextGC = goal


cdef void paceCheck(mcache* c) noexcept nogil:
    """The thread's credit ran out (chargeCredit): request a collection if
    the heap is past its goal, or near its memory limit with something to
    collect, and give the thread new credit. No allocator lock held."""
    cdef mheap* h = c.heap
    cdef uint64_t alloc, goal, retained = 0, headroom, room
    cdef bint request = False
    if h.pacer.gogc < 0 or h.closed:
        c.gcCredit = CREDIT_OFF
        return
    pa_lock(&h.lock)
    alloc = heapAllocLocked(h)
    goal = h.pacer.nextGC
    if alloc >= goal:
        request = True
    elif h.pacer.limitPages:
        # Go lowers the goal to what the memory limit leaves; here: over
        # 95% of it (the scavenger's goal, gcPercentGoal's limit twin),
        # collect if the heap grew by 4 MiB since the last collection, so
        # that a heap whose live part is over the limit does not collect
        # on every look.
        retained = h.pagesMapped - h.pagesReleased
        if retained * 20 >= h.pacer.limitPages * 19 and \
                alloc >= h.pacer.heapMarked + HEAP_MINIMUM:
            request = True
    pa_unlock(&h.lock)
    headroom = (goal - alloc) // 2 if goal > alloc else 0
    if h.pacer.limitPages:
        # Look again before the limit is reached, too.
        room = h.pacer.limitPages * 19 // 20
        room = (room - retained) << (PAGE_SHIFT - 1) if room > retained else 0
        if room < headroom:
            headroom = room
    c.gcCredit = <int64_t>(CREDIT_MIN if headroom < CREDIT_MIN else
                           CREDIT_MAX if headroom > CREDIT_MAX else headroom)
    if request:
        requestGC(h)


# The heaps with a pacer, for the pending call to find its heap by serial.
# Changed and read with the GIL held only (Heap.__init__, Heap's end, the
# pending call): a heap leaves it before the Heap object lets go of it.
cdef mheap* _paced = NULL


cdef void pacerEnable(mheap* h) noexcept:
    """List h as paced (GIL held)."""
    global _paced
    if not h.pacer.paced:
        h.pacer.paced = 1
        h.pacer.pacedNext = _paced
        _paced = h


cdef void pacerForget(mheap* h) noexcept:
    """Unlist h (GIL held): the Heap object is letting go of it, and a
    pending call queued for it will not find it."""
    global _paced
    cdef mheap** link = &_paced
    if not h.pacer.paced:
        return
    while link[0] != NULL:
        if link[0] == h:
            link[0] = h.pacer.pacedNext
            break
        link = &link[0].pacer.pacedNext
    h.pacer.paced = 0
    h.pacer.pacedNext = NULL


cdef mheap* findPaced(uint64_t serial) noexcept:
    cdef mheap* h = _paced
    while h != NULL and h.serial != serial:
        h = h.pacer.pacedNext
    return h


cdef void requestGC(mheap* h) noexcept nogil:
    """Queue one paced collection for h unless one is queued already. The
    pending call gets h's serial, not h: see runPacedGC."""
    if not Py_IsInitialized() or isFinalizing():
        return
    if not cas32(&h.pacer.pending, 0, 1):
        return
    if Py_AddPendingCall(runPacedGC, <void*><uintptr_t>h.serial) != 0:
        store32(&h.pacer.pending, 0)        # the queue is full: next look


cdef int runPacedGC(void* arg) noexcept with gil:
    """The pending call (main thread, GIL held, outside the allocator): a
    full collection for the heap with this serial, if it is still alive and
    open, then its live bytes and next goal. A heap closed or let go of in
    the meantime is left alone: it is not listed as paced any more, or its
    closed flag says so. Errors in the collection are reported as
    unraisable, never raised into whatever code was interrupted."""
    global _skipped
    cdef uint64_t serial = <uint64_t><uintptr_t>arg
    cdef mheap* h = findPaced(serial)
    if h == NULL:
        _skipped += 1
        return 0
    if h.closed or h.pacer.gogc < 0:
        store32(&h.pacer.pending, 0)
        _skipped += 1
        return 0
    try:
        _collect()
    except BaseException as e:
        _unraisable(e)
    # Finalizers of the collection may have closed or dropped the heap.
    h = findPaced(serial)
    if h == NULL:
        return 0
    pa_lock(&h.lock)
    setGoal(h, heapAllocLocked(h))
    pa_unlock(&h.lock)
    pa_add64(&h.pacer.triggered, 1)
    store32(&h.pacer.pending, 0)
    return 0


# Pending calls that found their heap gone or closed (tests).
cdef uint64_t _skipped = 0


import gc as _gc
_collect = _gc.collect


def _unraisable(exc):
    import sys
    try:
        sys.unraisablehook(type("UnraisableHookArgs", (), dict(
            exc_type=type(exc), exc_value=exc, exc_traceback=exc.__traceback__,
            err_msg="pyarena: exception in a paced collection", object=None))())
    except BaseException:
        pass


def _pacer_skipped():
    """Testing: pending calls that found their heap gone or closed."""
    return _skipped


def _pacer_state(heap_serial):
    """Testing: (pending, triggered, nextGC, heapMarked) of the paced heap
    with this serial, or None."""
    cdef mheap* h = findPaced(<uint64_t>heap_serial)
    if h == NULL:
        return None
    return (h.pacer.pending, pa_load64(&h.pacer.triggered), h.pacer.nextGC,
            h.pacer.heapMarked)


# ---------------------------------------------------------------------------
# The background scavenger

# Under slock.
cdef mheap* _scavHeaps = NULL       # heaps it looks at
cdef mheap* _current = NULL         # the heap it is releasing pages of
cdef int _running = 0               # the thread exists
cdef int _exiting = 0               # atexit: end, and start no more
cdef uint64_t _passes = 0           # periods it has worked (tests)


cdef void scavEnable(mheap* h) noexcept nogil:
    """Let the scavenger look at h, starting it if it is not running."""
    global _scavHeaps, _running
    slock(SLOCK)
    if not h.pacer.scavOn and not _exiting:
        h.pacer.scavOn = 1
        h.pacer.scavNext = _scavHeaps
        _scavHeaps = h
        if not _running:
            _running = scavStart(bgscavenge) == 0
        sbroadcast(SCOND)
    sunlock(SLOCK)


cdef void scavDisable(mheap* h) noexcept nogil:
    """Take h out of the scavenger's sight for good (close(), and before
    the heap can be unmapped): waits while the scavenger is inside it."""
    global _scavHeaps
    cdef mheap** link
    slock(SLOCK)
    if h.pacer.scavOn:
        while _current == h:
            swait(10)
        link = &_scavHeaps
        while link[0] != NULL:
            if link[0] == h:
                link[0] = h.pacer.scavNext
                break
            link = &link[0].pacer.scavNext
        h.pacer.scavOn = 0
        h.pacer.scavNext = NULL
    sunlock(SLOCK)


cdef void scavengeStep(mheap* h) noexcept nogil:
    """One period's work on h: a new generation, then up to SCAV_PAGES idle
    pages released (any free pages when retained is over 95% of the memory
    limit). Heap lock taken here, slock not held."""
    cdef uint64_t retained
    cdef uint32_t minAge = SCAV_MIN_AGE
    cdef uintptr_t n
    zeroFlushIdle(h, QUEUE_IDLE_NS)
    pa_lock(&h.lock)
    h.pacer.epoch += 1
    retained = h.pagesMapped - h.pagesReleased
    if h.pacer.limitPages and retained * 20 > h.pacer.limitPages * 19:
        minAge = 0
    if retained > h.pagesInUse:              # there are dirty free pages
        n = scavengeLocked(h, SCAV_PAGES, minAge)
        h.pacer.bgReleased += n
    pa_unlock(&h.lock)


cdef void* bgscavenge(void* arg) noexcept nogil:
    """The scavenger thread (Go: bgscavenge): a period's sleep, then a step
    on every heap it looks at; an untimed sleep while it looks at none."""
    global _current, _running, _passes
    cdef mheap* h
    cdef mheap* nxt
    slock(SLOCK)
    while not _exiting:
        swait(SCAV_PERIOD_MS if _scavHeaps != NULL else 0)
        if _exiting:
            break
        h = _scavHeaps
        while h != NULL and not _exiting:
            _current = h
            sunlock(SLOCK)
            scavengeStep(h)
            slock(SLOCK)
            # h is still listed: scavDisable waits while it is current.
            nxt = h.pacer.scavNext
            _current = NULL
            sbroadcast(SCOND)
            h = nxt
        _passes += 1
    _running = 0
    sbroadcast(SCOND)
    sunlock(SLOCK)
    return NULL


cdef void scavStop() noexcept nogil:
    """Interpreter exit: the scavenger ends after its current step; waits
    for that, a bounded time."""
    global _exiting
    cdef int k
    slock(SLOCK)
    _exiting = 1
    sbroadcast(SCOND)
    for k in range(100):
        if not _running:
            break
        swait(10)
    sunlock(SLOCK)


def _scavenger_state():
    """Testing: (running, passes, heaps looked at)."""
    cdef mheap* h
    cdef int n = 0, running
    cdef uint64_t passes
    # Counted under the lock, turned into objects after it (making objects
    # may run a collection whose finalizers close a heap: scavDisable).
    with nogil:
        slock(SLOCK)
        h = _scavHeaps
        while h != NULL:
            n += 1
            h = h.pacer.scavNext
        running = _running
        passes = _passes
        sunlock(SLOCK)
    return (bool(running), passes, n)


# fork: slock is held across it; the child has no scavenger thread, and
# starts one when a heap next asks.
cdef void atforkPrepare() noexcept nogil:
    slock(SLOCK)


cdef void atforkParent() noexcept nogil:
    sunlock(SLOCK)


cdef void atforkChild() noexcept nogil:
    global _running, _current, _scavHeaps
    cdef mheap* h = _scavHeaps
    cdef mheap* nxt
    # Forget every heap: the child's heaps ask again when made.
    while h != NULL:
        nxt = h.pacer.scavNext
        h.pacer.scavOn = 0
        h.pacer.scavNext = NULL
        h = nxt
    _scavHeaps = NULL
    _running = 0
    _current = NULL
    slockReinit()


slockInit()
pthread_atfork(atforkPrepare, atforkParent, atforkChild)


def _stop_scavenger():
    """atexit: stop the scavenger before the interpreter finalizes."""
    with nogil:
        scavStop()


import atexit
atexit.register(_stop_scavenger)
