# cython: language_level=3
"""Heap profiling: Go's sampling of allocations (malloc.go: nextSample,
fastexprand, nextSampleNoFP, profilealloc) and its buckets (mprof.go).
See _malloc.pyx for the allocator, _pprof.py for the profile a heap hands
out.

Every mcache counts down the bytes it allocates (mcache.nextEvent, taken
off by _mprof.countAlloc on every allocation path: tiny blocks, small
slots, large objects, for Python and C-level callers alike). The interval
until the next sample is drawn from an exponential distribution whose mean
is the heap's profile rate (fastexprand, Go's formula to the bit, with
Go's wyrand source per cache), so sampling is a Poisson process over the
bytes allocated and an allocation of S bytes is sampled with probability
1 - exp(-S/rate); the profile writer divides by that (pprof's
scaleHeapSample). nextSampleNoFP, Go's integer-only sampler (uniform on
[0, 2*rate)), is kept as the alternative a heap can be switched to
(_testing.set_sampler): it needs no floating point, but its intervals are
not memoryless, so the scaling is right only on average.

profilealloc records the sample: the stack (pyarena_stack.h: the Python
frames of a thread holding the GIL, as (code object, instruction offset)
pairs, without making any object; one frame naming the C-level API
otherwise) goes into a bucket keyed by (stack, slot size), and the object
goes into the heap's table of sampled objects, so that its free is counted
in its bucket too (Go marks the object with a profile special). The span
counts its sampled objects (nsampled) and, while it has any, gives up its
owner's fast local free (ownerThread 0): every free of the span then goes
out of line, where the table is looked at. So neither allocation nor free
pays anything for profiling but the countdown.

Go publishes its profile as of the last collection, because its frees are
found by sweeping; pyarena learns of each free when it happens, so a
bucket's counts are current.

Locking: the buckets and the table are guarded by mprofState.lock, taken
with no other allocator lock held, never by a path that holds one.
"""

from libc.stdint cimport int64_t, uint64_t, uint32_t, uintptr_t, int32_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset
from cpython.object cimport PyObject
from pyarena._types cimport (mheap, mcache, mspan, pa_mutex, pa_mutex_init, pa_lock, pa_unlock,
                             pa_add32, pa_load32, pa_loadptr, pa_storeptr, pa_load64, pa_store64,
                             pa_store64_relaxed)

cdef extern from "pyarena_stack.h":
    enum:
        PYARENA_STACK_MAX
        PYARENA_FRAME_PY
        PYARENA_FRAME_API
    ctypedef struct pyarena_frame:
        void* id
        int32_t where
        int32_t kind
    ctypedef struct pyarena_stack:
        int32_t n
        int32_t truncated
        pyarena_frame f[PYARENA_STACK_MAX]
    int pyarena_stack_capture(pyarena_stack* s) nogil
    int pyarena_stack_capture_api(pyarena_stack* s, const char* api) nogil
    uintptr_t pyarena_stack_hash(const pyarena_stack* s, uintptr_t size) nogil
    int pyarena_stack_equal(const pyarena_stack* a, const pyarena_stack* b) nogil
    # Needs the GIL; called only when this thread holds it (PyGILState_Check).
    void pyarena_stack_retain(const pyarena_stack* s) nogil
    void pyarena_stack_release(const pyarena_stack* s)

cdef extern from "Python.h":
    int PyGILState_Check() nogil

cdef extern from *:
    """
    static inline int pyarena_code_line(PyObject *code, int lasti)
    { return PyCode_Addr2Line((PyCodeObject *)code, lasti); }
    """
    int PyCode_Addr2Line "pyarena_code_line"(PyObject* code, int lasti)

cdef extern from *:
    """
    /* Go's fastlog2 (runtime/fastlog2.go, fastlog2table.go): the exponent
       of the float, plus linear interpolation in a 33-entry table of
       log2(1 + i/32) indexed by the mantissa's top 5 bits. The table holds
       Go's values (computed there with Go's math.Log2), so that the
       intervals match Go's to the bit. */
    static const double pyarena_fastlog2_table[33] = {
        0, 0.0443941193584535, 0.08746284125033943, 0.12928301694496647,
        0.16992500144231248, 0.2094533656289499, 0.24792751344358555,
        0.28540221886224837, 0.3219280948873623, 0.3575520046180837,
        0.39231742277876036, 0.4262647547020979, 0.4594316186372973,
        0.4918530963296748, 0.5235619560570128, 0.5545888516776374,
        0.5849625007211563, 0.6147098441152082, 0.6438561897747247,
        0.6724253419714956, 0.7004397181410922, 0.7279204545631992,
        0.7548875021634686, 0.7813597135246596, 0.8073549220576042,
        0.8328900141647417, 0.8579809951275721, 0.8826430493618412,
        0.9068905956085185, 0.9307373375628862, 0.9541963103868752,
        0.9772799234999164, 1
    };
    static inline double pyarena_fastlog2(double x) {
        uint64_t bits;
        memcpy(&bits, &x, sizeof bits);
        uint64_t xExp = ((bits >> 52) & 0x7ff) - 1023;
        uint64_t xManIndex = (bits >> (52 - 5)) % 32;
        uint64_t xManScale = (bits >> (52 - 5 - 20)) % (1 << 20);
        double low = pyarena_fastlog2_table[xManIndex];
        double high = pyarena_fastlog2_table[xManIndex + 1];
        return (double)(int64_t)xExp + low + (high - low) * (double)xManScale * (1.0 / (1 << 20));
    }
    #define PYARENA_GOLDEN 0x9E3779B97F4A7C15ull   /* 2**64 / phi */
    /* wyrand (Go: cheaprand on 64-bit): the low 32 bits of the 128-bit
       product's halves xor'ed. */
    static inline uint32_t pyarena_cheaprand(uint64_t *state) {
        uint64_t s = *state += 0xa0761d6478bd642full;
        unsigned __int128 m = (unsigned __int128)s * (s ^ 0xe7037ed1a0b428dbull);
        return (uint32_t)((uint64_t)(m >> 64) ^ (uint64_t)m);
    }
    """
    uint64_t GOLDEN "PYARENA_GOLDEN"
    double fastlog2 "pyarena_fastlog2"(double x) noexcept nogil
    uint32_t cheaprand_c "pyarena_cheaprand"(uint64_t* state) noexcept nogil

cdef enum:
    # Between samples, with profiling off, a cache still looks at the
    # heap's rate once per this many bytes, so that a rate changed under a
    # busy thread takes effect there (the setter's nudge is not atomic with
    # the owner's countdown).
    RECHECK_BYTES = 1 << 30
    BUCKETS_SIZE = 4096       # Go: buckHashSize is 179999; our profiles are small
    TABLE_MIN = 256


cdef struct mbucket:
    mbucket* next             # the hash chain
    mbucket* allnext          # every bucket, newest first
    uintptr_t hash
    uintptr_t size            # slot size of its objects
    uint64_t allocs
    uint64_t frees
    uint64_t allocBytes
    uint64_t freeBytes
    pyarena_stack stk


cdef struct mprofState:
    pa_mutex lock
    mbucket* buckets[BUCKETS_SIZE]
    mbucket* all
    uintptr_t nbuckets
    # Sampled objects: address -> bucket, open addressing with linear
    # probing, deletions by backward shift; at most half full.
    uintptr_t* keys
    mbucket** vals
    uintptr_t cap
    uintptr_t count


cdef pa_mutex _stateLock       # makes a heap's mprofState once
pa_mutex_init(&_stateLock)


# ---------------------------------------------------------------------------
# Samplers

cdef uint32_t cheaprand(uint64_t* state) noexcept nogil:
    return cheaprand_c(state)


cdef int64_t fastexprand(int64_t mean, uint32_t u) noexcept nogil:
    """An exponentially distributed interval with this mean (Go:
    fastexprand): q uniform on 1..2**26 from u, then -ln(q / 2**26) * mean,
    through fastlog2."""
    cdef uint32_t q
    cdef double qlog
    if mean > 0x7000000:
        mean = 0x7000000
    elif mean == 0:
        return 0
    q = <uint32_t>((<uint64_t>u * (1 << 26)) >> 32) + 1
    qlog = fastlog2(<double>q) - 26
    if qlog > 0:
        qlog = 0
    return <int64_t>(qlog * (-0.6931471805599453 * <double>mean)) + 1


cdef int64_t nextSampleNoFP(int64_t rate, uint32_t u) noexcept nogil:
    """Go's integer-only sampler: uniform on [0, 2 * rate), by Go's
    cheaprandn (a multiply and a shift, not a modulo)."""
    if rate > 0x3fffffff:
        rate = 0x3fffffff
    if rate == 0:
        return 0
    return <int64_t>((<uint64_t>u * <uint64_t>(2 * rate)) >> 32)


cdef int64_t nextSample(mheap* h, mcache* c, int64_t rate) noexcept nogil:
    """Bytes until the cache's next sample (Go: nextSample): never for rate
    0, the next allocation for rate 1."""
    if rate == 0:
        return RECHECK_BYTES
    if rate == 1:
        return 0
    if h.sampler:
        return nextSampleNoFP(rate, cheaprand_c(&c.rand))
    return fastexprand(rate, cheaprand_c(&c.rand))


cdef void armCache(mheap* h, mcache* c) noexcept nogil:
    """A new cache's countdown, seeded from its address and its thread (Go
    seeds each M's cheaprand)."""
    cdef int64_t rate = <int64_t>pa_load64(<uint64_t*>&h.profileRate)
    c.rand = (<uint64_t><uintptr_t>c) ^ (c.owner * GOLDEN)
    c.memProfRate = rate
    c.nextSample = nextSample(h, c, rate)
    c.eventArmed = c.nextEvent = c.nextSample if rate else RECHECK_BYTES


cdef void setProfileRate(mheap* h, int64_t rate) noexcept nogil:
    """Change the heap's rate; every cache re-arms at its next allocation
    (its countdown is nudged to 0; a nudge lost to the owner's own
    countdown takes effect within RECHECK_BYTES or the next sample)."""
    cdef mcache* c
    pa_store64(<uint64_t*>&h.profileRate, <uint64_t>rate)
    pa_lock(&h.lock)
    c = h.caches
    while c != NULL:
        pa_store64_relaxed(<uint64_t*>&c.nextEvent, 0)
        c = c.next
    pa_unlock(&h.lock)


# ---------------------------------------------------------------------------
# The countdown ran out.

cdef void mallocEvent(mcache* c, uintptr_t p, uintptr_t slot, mspan* s) noexcept nogil:
    """The allocation of p (slot bytes, in span s) ran c's countdown out:
    take what it counted off the sample interval, sample p if that ran out
    (Go: profilealloc), and arm the countdown again."""
    cdef mheap* h = c.heap
    cdef int64_t rate = <int64_t>pa_load64(<uint64_t*>&h.profileRate)
    cdef int64_t consumed = c.eventArmed - c.nextEvent
    if rate != c.memProfRate:
        # Turned on, off, or changed: a fresh interval at the new rate,
        # which this allocation is the first to count down (so that at
        # rate 1 it is sampled, as every allocation is).
        c.memProfRate = rate
        c.nextSample = nextSample(h, c, rate) - <int64_t>slot
        if c.nextSample < 0:
            c.nextSample = nextSample(h, c, rate)
            if rate:
                profilealloc(h, p, slot, s)
    else:
        c.nextSample -= consumed
        if c.nextSample < 0:
            c.nextSample = nextSample(h, c, rate)
            if rate:
                profilealloc(h, p, slot, s)
    c.eventArmed = c.nextEvent = c.nextSample if rate else RECHECK_BYTES


cdef uintptr_t mallocEventP(mcache* c, uintptr_t p, uintptr_t slot, mspan* s) noexcept nogil:
    """mallocEvent, returning p (for the fast paths' tail calls)."""
    mallocEvent(c, p, slot, s)
    return p


cdef mprofState* stateOf(mheap* h) noexcept nogil:
    """The heap's profile state, made on first use; NULL without memory."""
    cdef mprofState* st = <mprofState*>pa_loadptr(&h.prof)
    if st != NULL:
        return st
    pa_lock(&_stateLock)
    st = <mprofState*>h.prof
    if st == NULL:
        st = <mprofState*>calloc(1, sizeof(mprofState))
        if st != NULL:
            pa_mutex_init(&st.lock)
            pa_storeptr(&h.prof, st)
    pa_unlock(&_stateLock)
    return st


cdef bint tableGrow(mprofState* st) noexcept nogil:
    cdef uintptr_t ncap = st.cap * 2 if st.cap else TABLE_MIN
    cdef uintptr_t* keys = <uintptr_t*>calloc(ncap, sizeof(uintptr_t))
    cdef mbucket** vals = <mbucket**>calloc(ncap, sizeof(mbucket*))
    cdef uintptr_t i, j
    if keys == NULL or vals == NULL:
        free(keys)
        free(vals)
        return False
    for i in range(st.cap):
        if st.keys[i]:
            j = slotHash(st.keys[i]) & (ncap - 1)
            while keys[j]:
                j = (j + 1) & (ncap - 1)
            keys[j] = st.keys[i]
            vals[j] = st.vals[i]
    free(st.keys)
    free(st.vals)
    st.keys = keys
    st.vals = vals
    st.cap = ncap
    return True


cdef inline uintptr_t slotHash(uintptr_t p) noexcept nogil:
    return ((p >> 4) * GOLDEN) >> 20


cdef void profilealloc(mheap* h, uintptr_t p, uintptr_t slot, mspan* s) noexcept nogil:
    """Record the allocation of p as a sample: its stack into a bucket, p
    into the table of sampled objects (Go: profilealloc, mProf_Malloc)."""
    cdef pyarena_stack stk
    cdef mprofState* st = stateOf(h)
    cdef uintptr_t hsh, i
    cdef mbucket* b
    cdef bint gil = PyGILState_Check()
    if st == NULL:
        return
    if gil:
        pyarena_stack_capture(&stk)
    else:
        pyarena_stack_capture_api(&stk, "pyarena C-level API (no GIL)")
    hsh = pyarena_stack_hash(&stk, slot)
    pa_lock(&st.lock)
    b = st.buckets[hsh % BUCKETS_SIZE]
    while b != NULL and not (b.hash == hsh and b.size == slot and
                             pyarena_stack_equal(&b.stk, &stk)):
        b = b.next
    if b == NULL:
        b = <mbucket*>calloc(1, sizeof(mbucket))
        if b == NULL:
            pa_unlock(&st.lock)
            return
        b.hash = hsh
        b.size = slot
        memcpy(&b.stk, &stk, sizeof(pyarena_stack))
        if gil:
            # The bucket outlives the frames: it owns their code objects.
            pyarena_stack_retain(&b.stk)
        b.next = st.buckets[hsh % BUCKETS_SIZE]
        st.buckets[hsh % BUCKETS_SIZE] = b
        b.allnext = st.all
        st.all = b
        st.nbuckets += 1
    if (st.count + 1) * 2 > st.cap and not tableGrow(st):
        pa_unlock(&st.lock)
        return           # sampled, but its free will not be seen: not counted
    i = slotHash(p) & (st.cap - 1)
    while st.keys[i] and st.keys[i] != p:
        i = (i + 1) & (st.cap - 1)
    if st.keys[i] == 0:
        st.count += 1
        pa_add32(&s.nsampled, 1)
    st.keys[i] = p
    st.vals[i] = b
    b.allocs += 1
    b.allocBytes += slot
    pa_unlock(&st.lock)
    # The span's owner frees out of line from now on (see the header); the
    # owner is the caller, allocating from s.
    s.ownerThread = 0


cdef void profilefree(mheap* h, mspan* s, uintptr_t p) noexcept nogil:
    """p, an object of span s, which has sampled objects, is being freed:
    if it was sampled, count the free in its bucket and forget it."""
    cdef mprofState* st = <mprofState*>pa_loadptr(&h.prof)
    cdef uintptr_t i, j, k
    cdef mbucket* b
    if st == NULL:
        return
    pa_lock(&st.lock)
    if st.cap == 0:
        pa_unlock(&st.lock)
        return
    i = slotHash(p) & (st.cap - 1)
    while st.keys[i] and st.keys[i] != p:
        i = (i + 1) & (st.cap - 1)
    if st.keys[i] == 0:
        pa_unlock(&st.lock)
        return
    b = st.vals[i]
    b.frees += 1
    b.freeBytes += b.size
    # Backward-shift deletion: pull later entries of the run into the hole.
    j = i
    while True:
        j = (j + 1) & (st.cap - 1)
        if st.keys[j] == 0:
            break
        k = slotHash(st.keys[j]) & (st.cap - 1)
        if (j > i and (k <= i or k > j)) or (j < i and (k <= i and k > j)):
            st.keys[i] = st.keys[j]
            st.vals[i] = st.vals[j]
            i = j
    st.keys[i] = 0
    st.vals[i] = NULL
    st.count -= 1
    pa_unlock(&st.lock)
    pa_add32(&s.nsampled, -1)


cdef void* sampleOf(mheap* h, uintptr_t p) noexcept nogil:
    """The bucket of p if p is a sampled live object, else NULL (a debug
    heap's report names the allocation's stack from it). Buckets live as
    long as the heap, so the pointer stays good after the lock."""
    cdef mprofState* st = <mprofState*>pa_loadptr(&h.prof)
    cdef uintptr_t i
    cdef mbucket* b = NULL
    if st == NULL:
        return NULL
    pa_lock(&st.lock)
    if st.cap:
        i = slotHash(p) & (st.cap - 1)
        while st.keys[i] and st.keys[i] != p:
            i = (i + 1) & (st.cap - 1)
        if st.keys[i] == p:
            b = st.vals[i]
    pa_unlock(&st.lock)
    return b


cdef object bucketStack(void* bucket):
    """A bucket's stack as (filename, function, lineno) tuples, innermost
    first (GIL held)."""
    cdef mbucket* b = <mbucket*>bucket
    cdef int f
    cdef object code
    out = []
    if b == NULL:
        return out
    for f in range(b.stk.n):
        if b.stk.f[f].kind == PYARENA_FRAME_PY:
            code = <object><PyObject*>b.stk.f[f].id
            out.append((code.co_filename, code.co_qualname,
                        PyCode_Addr2Line(<PyObject*>code, b.stk.f[f].where)))
        elif b.stk.f[f].kind == PYARENA_FRAME_API:
            out.append(("", (<bytes>(<const char*>b.stk.f[f].id)).decode(), 0))
    return out


cdef void mprofDestroy(mheap* h) noexcept:
    """Free the heap's buckets and table (GIL held: buckets own code
    objects)."""
    cdef mprofState* st = <mprofState*>h.prof
    cdef mbucket* b
    cdef mbucket* nxt
    if st == NULL:
        return
    h.prof = NULL
    b = st.all
    while b != NULL:
        nxt = b.allnext
        pyarena_stack_release(&b.stk)
        free(b)
        b = nxt
    free(st.keys)
    free(st.vals)
    free(st)


cdef object profileRecords(mheap* h, object code_frame, tuple truncated):
    """The buckets as (stack, alloc_count, alloc_bytes, free_count,
    free_bytes) records for _pprof.HeapProfile.from_buckets; a stack is a
    tuple of (filename, function, lineno, start_line), innermost first,
    resolved by code_frame(code, lasti), ending in truncated when frames
    were dropped. The caller passes _pprof's two so that the core does not
    import a face.
    Counts are copied under the lock, Python objects made after it (making
    one may run code that allocates, and samples, in this heap)."""
    cdef mprofState* st = <mprofState*>pa_loadptr(&h.prof)
    cdef mbucket* b
    cdef mbucket** bs
    cdef uint64_t* counts
    cdef uintptr_t n, i, k
    cdef int f
    if st == NULL:
        return []
    pa_lock(&st.lock)
    n = st.nbuckets
    bs = <mbucket**>calloc(n + 1, sizeof(mbucket*))
    counts = <uint64_t*>calloc(4 * n + 1, sizeof(uint64_t))
    if bs == NULL or counts == NULL:
        pa_unlock(&st.lock)
        free(bs)
        free(counts)
        raise MemoryError("cannot copy the heap profile")
    b = st.all
    i = 0
    while b != NULL and i < n:
        bs[i] = b
        counts[4 * i] = b.allocs
        counts[4 * i + 1] = b.allocBytes
        counts[4 * i + 2] = b.frees
        counts[4 * i + 3] = b.freeBytes
        b = b.allnext
        i += 1
    pa_unlock(&st.lock)
    out = []
    try:
        for k in range(i):
            b = bs[k]
            frames = []
            for f in range(b.stk.n):
                if b.stk.f[f].kind == PYARENA_FRAME_PY:
                    frames.append(code_frame(<object><PyObject*>b.stk.f[f].id, b.stk.f[f].where))
                elif b.stk.f[f].kind == PYARENA_FRAME_API:
                    frames.append(("", (<bytes>(<const char*>b.stk.f[f].id)).decode(), 0, 0))
            if b.stk.truncated:
                frames.append(truncated)
            out.append((tuple(frames), counts[4 * k], counts[4 * k + 1], counts[4 * k + 2],
                        counts[4 * k + 3]))
    finally:
        free(bs)
        free(counts)
    return out
