# cython: language_level=3
"""Clearing ahead of time, and knowing what is still zero. See _malloc.pyx
for the overview.

A zeroed large allocation from reused memory costs a clear of every page
that may hold old data. This module makes that clear cheaper, rarer, and
moves it off the allocating thread when a core has nothing else to do.

What is still zero. The page heap's scav bits say which free pages read
as zero by the allocator's own bookkeeping (fresh, or released). For the
rest the kernel's page tables can tell: an anonymous private page whose
entry is empty (never faulted since it was mapped or given back with
MADV_DONTNEED) reads as zero, and so does one that maps the shared zero
page (a read fault). dirtyRegions asks with the PAGEMAP_SCAN ioctl of
/proc/self/pagemap (Linux 6.7): one call returns the runs of pages that
are present or swapped, and costs about a microsecond for 64 MiB that
were never touched, because it skips empty page tables whole. Every other
kind of entry (present, swapped, migrating, a marker) counts as written,
so the answer is right whatever wrote the memory (a view, a buffer, a C
pointer), with swap, after a THP split or collapse (a collapse fills with
zeros, a split keeps pages present), and after fork: the file is bound to
the process that opened it, so the child opens its own (atfork) and a
call from a process that did not is refused (a getpid() check). When the
kernel cannot tell (an older kernel, no /proc), every page counts as
written. Soft-dirty bits are not used: clearing them is a process-wide
write to /proc/self/clear_refs that would disturb everything else.

Clearing what is dirty. clearMemory reads memory before it writes it and
stores zeros only over 64-byte lines that are not zero already
(check-then-clear, AVX2 when the CPU has it). A loop that writes one byte
per 4 KiB page leaves 63 of every 64 lines zero: reading them costs about
half of writing them, and lines written nowhere stay clean in every
cache; fully written memory costs what a memset does.

Clearing ahead of time. With prezero on (Heap(prezero=...)), a freed large
object of at least ZERO_MIN_PAGES does not go to the page heap or the
thread's spare: it waits in its heap's zeroing queue (at most
ZERO_QUEUE_SPANS spans, ZERO_QUEUE_PAGES in all, oldest evicted to the
page heap). One worker thread per process clears queued spans,
ZERO_CHUNK at a time, with the pages the page tables show untouched
skipped, while the process computes; s.zeroed says how far it got. A
large allocation of the same size takes a queued span (a fully cleared
one first, else the one furthest along), waits at most for the worker's
current chunk, and clears only the rest itself. The worker runs without
the GIL and never touches a Python object, holds no allocator lock while
it clears (the queue's lock is a leaf, held for bookkeeping only), runs
only when a core is idle (idleCore), and sleeps on a condition variable
when there is nothing to do. It is a detached native thread: it never
keeps the interpreter alive; zeroStop (atexit) stops it, zeroDisable
(close, and before a heap is unmapped) takes a heap out of its sight and
waits for its current chunk. In a child after fork the worker does not
exist: the child forgets it and starts a new one when it needs one.

Go has no such worker: its background scavenger (mgcscavenge.go) returns
memory to the OS, paced to about 1% of one CPU; this one does the
opposite job (it makes memory ready for reuse) and is paced by idle
cores instead of a CPU fraction, because the work it does is work the
allocating thread would otherwise do itself, at once.

Invariants (checked by Heap.check(), _mcheck.pyx): every queued span is a
large span on its heap's queue with list inSpare and allocCount 0,
counted in pagesSpare, with s.zeroed <= its bytes; the queue's page and
span counts are its spans'.
"""

from libc.stdint cimport uint64_t, uintptr_t, int64_t
from libc.string cimport memset
from pyarena._types cimport (mheap, mspan, mzero, mSpanList, inNoList, inSpare, PAGE_SHIFT,
                             PAGE_SIZE, ZERO_MIN_PAGES, ZERO_QUEUE_SPANS, ZERO_QUEUE_PAGES,
                             ZERO_CHUNK, pa_add64, pa_loadptr, pa_storeptr, pa_load64)
from pyarena._mspan cimport spanListAppend, spanListRemove
from pyarena._mheap cimport freeSpan, spanOf

cdef extern from *:
    """
    #include <errno.h>
    #include <fcntl.h>
    #include <pthread.h>
    #include <sched.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>
    #include <sys/ioctl.h>
    #include <time.h>
    #include <unistd.h>

    /* PAGEMAP_SCAN (linux/fs.h, 6.7), declared here for older headers. */
    struct pyarena_pm_scan_arg {
        unsigned long long size, flags, start, end, walk_end, vec, vec_len,
            max_pages, category_inverted, category_mask, category_anyof_mask,
            return_mask;
    };
    #define PYARENA_PAGEMAP_SCAN _IOWR('f', 16, struct pyarena_pm_scan_arg)
    #define PYARENA_PAGE_IS_PRESENT (1 << 3)
    #define PYARENA_PAGE_IS_SWAPPED (1 << 4)
    #define PYARENA_PAGE_IS_PFNZERO (1 << 5)

    static int pyarena_pm_fd = -1;
    static pid_t pyarena_pm_pid = 0;
    static int pyarena_pm_ok = 1;      /* 0: the kernel cannot scan */

    static void pyarena_pm_open(void) {
        if (pyarena_pm_fd >= 0) close(pyarena_pm_fd);
        pyarena_pm_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
        pyarena_pm_pid = getpid();
    }

    /* The runs of pages in [a, b) that may hold data (present and not the
       zero page, or swapped), up to n of them, with where the scan stopped;
       -1 when the kernel cannot tell. */
    static long pyarena_dirty_regions(uintptr_t a, uintptr_t b,
                                      struct pyarena_page_region *v, long n,
                                      uintptr_t *walk_end) {
        struct pyarena_pm_scan_arg arg;
        long r, i, k;
        if (!pyarena_pm_ok || pyarena_pm_fd < 0 || getpid() != pyarena_pm_pid)
            return -1;
        memset(&arg, 0, sizeof arg);
        arg.size = sizeof arg;
        arg.start = a;
        arg.end = b;
        arg.vec = (unsigned long long)(uintptr_t)v;
        arg.vec_len = (unsigned long long)n;
        arg.category_anyof_mask = PYARENA_PAGE_IS_PRESENT | PYARENA_PAGE_IS_SWAPPED;
        arg.return_mask = PYARENA_PAGE_IS_PRESENT | PYARENA_PAGE_IS_SWAPPED |
                          PYARENA_PAGE_IS_PFNZERO;
        r = ioctl(pyarena_pm_fd, PYARENA_PAGEMAP_SCAN, &arg);
        if (r < 0) {
            if (errno == ENOTTY || errno == EINVAL || errno == EPERM ||
                    errno == EACCES || errno == EOPNOTSUPP)
                pyarena_pm_ok = 0;
            return -1;
        }
        if (arg.walk_end <= a || arg.walk_end > b)
            return -1;
        *walk_end = (uintptr_t)arg.walk_end;
        /* Drop runs that map the zero page: they read as zero. */
        for (i = k = 0; i < r; i++) {
            if (v[i].categories == (PYARENA_PAGE_IS_PRESENT | PYARENA_PAGE_IS_PFNZERO))
                continue;
            v[k++] = v[i];
        }
        return k;
    }

    /* Zero n bytes at p (both multiples of 64) storing only over lines
       that are not zero already. */
    static void pyarena_clear_lines_generic(char *p, size_t n) {
        uint64_t *w = (uint64_t *)p, *end = (uint64_t *)(p + n);
        for (; w < end; w += 8) {
            if (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) {
                w[0] = w[1] = w[2] = w[3] = w[4] = w[5] = w[6] = w[7] = 0;
                __asm__ volatile("" ::: "memory");
            }
        }
    }
    #if defined(__x86_64__) && defined(__GNUC__)
    #include <immintrin.h>
    __attribute__((target("avx2")))
    static void pyarena_clear_lines_avx2(char *p, size_t n) {
        __m256i z = _mm256_setzero_si256();
        size_t i;
        int l;
        /* 256 bytes (four lines) tested at once, then line by line. */
        for (i = 0; i + 256 <= n; i += 256) {
            __m256i *q = (__m256i *)(p + i);
            __m256i o = _mm256_or_si256(
                _mm256_or_si256(_mm256_or_si256(q[0], q[1]), _mm256_or_si256(q[2], q[3])),
                _mm256_or_si256(_mm256_or_si256(q[4], q[5]), _mm256_or_si256(q[6], q[7])));
            if (_mm256_testz_si256(o, o))
                continue;
            for (l = 0; l < 4; l++) {
                __m256i u = _mm256_or_si256(q[2 * l], q[2 * l + 1]);
                if (!_mm256_testz_si256(u, u)) {
                    _mm256_store_si256(q + 2 * l, z);
                    _mm256_store_si256(q + 2 * l + 1, z);
                }
            }
        }
        if (i < n)
            pyarena_clear_lines_generic(p + i, n - i);
    }
    #endif
    static void (*pyarena_clear_lines)(char *, size_t) = pyarena_clear_lines_generic;
    static void pyarena_clear_init(void) {
    #if defined(__x86_64__) && defined(__GNUC__)
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx2"))
            pyarena_clear_lines = pyarena_clear_lines_avx2;
    #endif
    }

    /* CPUs this process may run on: its affinity mask, capped by a cgroup
       v2 quota (cpu.max "quota period"). */
    static int pyarena_usable_cpus(void) {
        cpu_set_t set;
        int n = 1;
        FILE *f;
        long long quota, period;
        char word[32];
        if (sched_getaffinity(0, sizeof set, &set) == 0)
            n = CPU_COUNT(&set);
        f = fopen("/sys/fs/cgroup/cpu.max", "re");
        if (f != NULL) {
            if (fscanf(f, "%31s %lld", word, &period) == 2 && strcmp(word, "max") != 0) {
                quota = atoll(word);
                if (period > 0 && quota > 0 && quota / period < n)
                    n = (int)(quota / period) > 0 ? (int)(quota / period) : 1;
            }
            fclose(f);
        }
        return n;
    }

    /* Tasks runnable on the whole machine now, the caller included: the
       fourth field of /proc/loadavg ("running/total"); -1 unknown. */
    static int pyarena_runnable(void) {
        char buf[128];
        int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
        ssize_t k;
        char *s;
        if (fd < 0)
            return -1;
        k = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (k <= 0)
            return -1;
        buf[k] = 0;
        s = buf;
        for (int field = 0; field < 3; field++) {
            s = strchr(s, ' ');
            if (s == NULL)
                return -1;
            s++;
        }
        return atoi(s);
    }

    static int64_t pyarena_now_ns(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
    }

    static inline void pyarena_cpu_relax(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #endif
    }

    static pthread_mutex_t pyarena_zlock = PTHREAD_MUTEX_INITIALIZER;
    static pthread_cond_t pyarena_zcond = PTHREAD_COND_INITIALIZER;

    /* The worker's sleep: until signalled, or us microseconds. */
    static void pyarena_zwait_us(int64_t us) {
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        t.tv_nsec += (us % 1000000) * 1000;
        t.tv_sec += us / 1000000 + t.tv_nsec / 1000000000;
        t.tv_nsec %= 1000000000;
        pthread_cond_timedwait(&pyarena_zcond, &pyarena_zlock, &t);
    }
    /* Until signalled, or ms milliseconds (0: no limit). */
    static void pyarena_zwait(int64_t ms) {
        if (ms <= 0)
            pthread_cond_wait(&pyarena_zcond, &pyarena_zlock);
        else
            pyarena_zwait_us(ms * 1000);
    }

    static void pyarena_zreinit(void) {
        pthread_mutex_init(&pyarena_zlock, NULL);
        pthread_cond_init(&pyarena_zcond, NULL);
    }

    static int pyarena_start_detached(void *(*fn)(void *)) {
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
    long pmDirtyRegions "pyarena_dirty_regions"(uintptr_t a, uintptr_t b, pageRegion* v,
                                                 long n, uintptr_t* walkEnd) noexcept nogil
    void pmOpen "pyarena_pm_open"() noexcept nogil
    void clearLines "pyarena_clear_lines"(char* p, size_t n) noexcept nogil
    void clearInit "pyarena_clear_init"() noexcept nogil
    int usableCPUs "pyarena_usable_cpus"() noexcept nogil
    int runnable "pyarena_runnable"() noexcept nogil
    int64_t nowNs "pyarena_now_ns"() noexcept nogil
    void cpuRelax "pyarena_cpu_relax"() noexcept nogil
    void zlock "pthread_mutex_lock"(void* m) noexcept nogil
    void zunlock "pthread_mutex_unlock"(void* m) noexcept nogil
    void* ZLOCK "(&pyarena_zlock)"
    void zwait "pyarena_zwait"(int64_t ms) noexcept nogil
    void zwaitUs "pyarena_zwait_us"(int64_t us) noexcept nogil
    void zsignal "pthread_cond_signal"(void* c) noexcept nogil
    void zbroadcast "pthread_cond_broadcast"(void* c) noexcept nogil
    void* ZCOND "(&pyarena_zcond)"
    void zreinit "pyarena_zreinit"() noexcept nogil
    int startDetached "pyarena_start_detached"(void* (*fn)(void*) noexcept nogil) noexcept nogil

cdef extern from "<pthread.h>" nogil:
    int pthread_atfork(void (*prepare)() noexcept nogil, void (*parent)() noexcept nogil,
                       void (*child)() noexcept nogil)

cdef enum:
    REGIONS = 16
    # The worker looks again at whether a core is idle this often while it
    # works, and sleeps this long when none is.
    IDLE_RECHECK_NS = 10000000
    IDLE_BACKOFF_MS = 10
    # The newest queued span of a heap is left alone this long: a loop
    # that makes and drops temporaries takes it back within microseconds,
    # and a worker inside it would only make the taker wait and move its
    # cache lines to another core. Work that follows a drop (computation)
    # gives the worker the rest.
    KEEP_GRACE_NS = 100000
    KEEP_GRACE_US = 200


# ---------------------------------------------------------------------------
# What is still zero, and clearing what is not

cdef long dirtyRegions(uintptr_t a, uintptr_t b, pageRegion* out, long n,
                       uintptr_t* walkEnd) noexcept nogil:
    """The runs of pages in [a, b) (page-aligned) that may hold data, up to
    n of them, and in *walkEnd where the answer ends (b, or where the n-th
    run ended); -1 when the kernel cannot tell: then all of [a, b) may."""
    return pmDirtyRegions(a, b, out, n, walkEnd)


cdef void clearMemory(uintptr_t p, size_t n) noexcept nogil:
    """Zero n bytes at p, storing only over 64-byte lines that are not zero
    already (the bytes are read first). For memory only the caller can see."""
    cdef uintptr_t a = (p + 63) & ~(<uintptr_t>63)
    cdef uintptr_t b = (p + n) & ~(<uintptr_t>63)
    if n < 4096 or b <= a:
        memset(<void*>p, 0, n)
        return
    if a > p:
        memset(<void*>p, 0, a - p)
    clearLines(<char*>a, b - a)
    if p + n > b:
        memset(<void*>b, 0, p + n - b)


cdef uintptr_t clearDirty(uintptr_t a, uintptr_t b) noexcept nogil:
    """Zero the page-aligned range [a, b), skipping the pages the page
    tables show hold nothing; the bytes it had to look at."""
    cdef pageRegion regs[REGIONS]
    cdef uintptr_t walk, x, y, n = 0
    cdef long k, i
    while a < b:
        k = dirtyRegions(a, b, regs, REGIONS, &walk)
        if k < 0:
            clearMemory(a, b - a)
            return n + (b - a)
        for i in range(k):
            x = <uintptr_t>regs[i].start
            y = <uintptr_t>regs[i].end
            if x < a:
                x = a
            if y > walk:
                y = walk
            if y > x:
                clearMemory(x, y - x)
                n += y - x
        a = walk
    return n


# ---------------------------------------------------------------------------
# The zeroing queue

# All of the below under zlock (ZLOCK), a leaf lock.
cdef mheap* _heaps = NULL          # heaps with prezero on
cdef int _running = 0              # the worker thread exists
cdef int _sleeping = 0             # it waits on ZCOND
cdef int _exiting = 0              # zeroStop: the worker must end
cdef uint64_t _wakeups = 0
cdef int _idle = 1                 # the last idle-core verdict
cdef int64_t _idleChecked = 0
cdef int _cpus = 0                 # usableCPUs(), at import
cdef int _idleOverride = -1        # tests: 1 always idle, 0 never, -1 look


cdef bint prezeroDefault() noexcept nogil:
    """Prezero by default only where an idle core can exist: two CPUs or
    more usable by this process."""
    return _cpus >= 2


cdef bint idleCore() noexcept nogil:
    """Whether a CPU is free for the worker: fewer tasks runnable on the
    machine, the worker aside, than CPUs this process may use. Looked at
    once per IDLE_RECHECK_NS at most; without /proc, yes."""
    global _idle, _idleChecked
    cdef int64_t t = nowNs()
    cdef int r
    if _idleOverride >= 0:
        _idle = _idleOverride
        return _idle
    if t - _idleChecked < IDLE_RECHECK_NS:
        return _idle
    _idleChecked = t
    r = runnable()
    _idle = r < 0 or r - 1 < _cpus
    return _idle


cdef void zeroEnable(mheap* h) noexcept nogil:
    """Turn prezero on for a new heap."""
    global _heaps
    zlock(ZLOCK)
    if not h.zero.on:
        h.zero.on = 1
        h.zero.next = _heaps
        _heaps = h
    zunlock(ZLOCK)


cdef inline uintptr_t spanBytes(mspan* s) noexcept nogil:
    return s.npages << PAGE_SHIFT


cdef bint zeroKeep(mheap* h, mspan* s) noexcept nogil:
    """Queue the freed large span s (allocCount already 0) to be cleared
    ahead of time, evicting the oldest queued span to the page heap when
    the queue is over its bounds; False when h does not queue (prezero
    off, closed heap, too small a span): the caller frees it."""
    global _running
    cdef mzero* z = &h.zero
    cdef mspan* evict = NULL
    cdef mspan* t
    cdef bint start = False
    if s.npages < ZERO_MIN_PAGES or s.npages > ZERO_QUEUE_PAGES:
        return False
    zlock(ZLOCK)
    if not z.on or h.closed:
        zunlock(ZLOCK)
        return False
    s.freshindex = 1          # its scav bits are stale: every page dirty
    s.zeroed = 0
    spanListAppend(&z.queue, s, inSpare)
    z.lastKeep = nowNs()
    pa_add64(&h.pagesSpare, s.npages)
    z.npages += s.npages
    z.nspans += 1
    if z.nspans > ZERO_QUEUE_SPANS or z.npages > ZERO_QUEUE_PAGES:
        t = z.queue.first
        while t != NULL and t == z.current:
            t = t.next
        if t != NULL and t != s:
            evict = t
            unqueue(h, t)
    if not _exiting:
        if not _running:
            _running = 1
            start = True
        elif _sleeping:
            zsignal(ZCOND)
    zunlock(ZLOCK)
    if start and startDetached(zeroWorker) != 0:
        zlock(ZLOCK)
        _running = 0
        zunlock(ZLOCK)
    if evict != NULL:
        releaseSpan(h, evict)
    return True


cdef inline void unqueue(mheap* h, mspan* s) noexcept nogil:
    """Take s off h's queue (zlock held); its pages stay spare."""
    spanListRemove(&h.zero.queue, s)
    h.zero.npages -= s.npages
    h.zero.nspans -= 1
    if h.zero.current == s:
        h.zero.current = NULL


cdef inline void waitWorker(mheap* h, mspan* s) noexcept nogil:
    """Wait until the worker is out of its chunk of s (any span of h if s
    is NULL): at most one ZERO_CHUNK's clear. zlock not held."""
    cdef mspan* b
    while True:
        b = <mspan*>pa_loadptr(<void**>&h.zero.busy)
        if b == NULL or (s != NULL and b != s):
            return
        cpuRelax()


cdef void releaseSpan(mheap* h, mspan* s) noexcept nogil:
    """An unqueued span back to the page heap (dirty), no lock held."""
    pa_add64(&h.pagesSpare, -s.npages)
    s.list = inNoList
    freeSpan(h, s)


cdef mspan* zeroTake(mheap* h, uintptr_t npages) noexcept nogil:
    """A queued span of npages pages for a new large object, or NULL: one
    the worker cleared whole if there is one, else the one it got furthest
    with. The worker is out of it when it returns; s.zeroed bytes from its
    start are clear, the rest the caller clears (freshindex 1: its scav
    bits say nothing)."""
    cdef mzero* z = &h.zero
    cdef mspan* s
    cdef mspan* best = NULL
    if z.nspans == 0:             # a racy look: a miss only costs a page-heap trip
        return NULL
    zlock(ZLOCK)
    s = z.queue.first
    while s != NULL:
        if s.npages == npages:
            if best == NULL or s.zeroed > best.zeroed:
                best = s
            if s.zeroed == spanBytes(s):
                break
        s = s.next
    if best != NULL:
        unqueue(h, best)
    zunlock(ZLOCK)
    if best == NULL:
        return NULL
    waitWorker(h, best)
    pa_add64(&h.pagesSpare, -npages)
    best.list = inNoList
    return best


cdef void zeroFlush(mheap* h) noexcept nogil:
    """Give every queued span of h back to the page heap (Heap.release)."""
    cdef mspan* s
    while True:
        zlock(ZLOCK)
        s = h.zero.queue.first
        if s != NULL:
            unqueue(h, s)
        zunlock(ZLOCK)
        if s == NULL:
            return
        waitWorker(h, s)
        releaseSpan(h, s)


cdef bint zeroFlushIdle(mheap* h, int64_t idleNs) noexcept nogil:
    """zeroFlush when nothing was queued for idleNs: the background
    scavenger (_mgcpacer) treats a queue left alone that long as idle
    memory, and gives it back like any free run. Whether it flushed."""
    cdef bint idle
    zlock(ZLOCK)
    idle = h.zero.on and h.zero.queue.first != NULL and nowNs() - h.zero.lastKeep > idleNs
    zunlock(ZLOCK)
    if idle:
        zeroFlush(h)
    return idle


cdef void zeroDisable(mheap* h) noexcept nogil:
    """Prezero off for h, its queue flushed, the worker out of its memory
    for good (close(), and before the heap is unmapped)."""
    global _heaps
    cdef mheap** link
    zlock(ZLOCK)
    if h.zero.on:
        h.zero.on = 0
        link = &_heaps
        while link[0] != NULL:
            if link[0] == h:
                link[0] = h.zero.next
                break
            link = &link[0].zero.next
        h.zero.next = NULL
        h.zero.current = NULL
    zunlock(ZLOCK)
    waitWorker(h, NULL)
    zeroFlush(h)


cdef uintptr_t zeroCheck(mheap* h) noexcept nogil:
    """Heap.check()'s look at h's queue: 0 when every queued span is a
    large in-use span of h with list inSpare, allocCount 0 and s.zeroed
    within it, and the queue's counts are its spans'; else the address of
    the first span that is not (1 for wrong counts)."""
    cdef mspan* s
    cdef uintptr_t pages = 0, spans = 0, bad = 0
    zlock(ZLOCK)
    s = h.zero.queue.first
    while s != NULL and bad == 0:
        if s.sizeclass != 0 or s.list != inSpare or s.allocCount != 0 or \
                s.zeroed > spanBytes(s) or spanOf(h, s.startAddr) != s:
            bad = s.startAddr
        pages += s.npages
        spans += 1
        s = s.next
    if bad == 0 and (pages != h.zero.npages or spans != h.zero.nspans):
        bad = 1
    zunlock(ZLOCK)
    return bad


# ---------------------------------------------------------------------------
# The worker

cdef mspan* pickWork(mheap** hp, bint* later) noexcept nogil:
    """The oldest queued span not yet cleared, of any heap, but a heap's
    newest within KEEP_GRACE_NS (100 us) of its queueing (*later set then); zlock
    held."""
    cdef mheap* h = _heaps
    cdef mspan* s
    cdef int64_t t = nowNs()
    later[0] = False
    while h != NULL:
        s = h.zero.queue.first
        while s != NULL:
            if s.zeroed < spanBytes(s):
                if s == h.zero.queue.last and t - h.zero.lastKeep < KEEP_GRACE_NS:
                    later[0] = True
                else:
                    hp[0] = h
                    return s
            s = s.next
        h = h.zero.next
    return NULL


cdef void* zeroWorker(void* arg) noexcept nogil:
    """The worker thread: clear queued spans while a core is idle, a chunk
    at a time, checking between chunks whether the span was taken; sleep
    when there is nothing to do. Never touches a Python object."""
    global _sleeping, _running, _wakeups
    cdef mheap* h = NULL
    cdef mspan* s
    cdef uintptr_t off, n, done
    cdef int64_t since
    cdef bint later
    zlock(ZLOCK)
    while not _exiting:
        s = pickWork(&h, &later)
        if s == NULL and later:
            zwaitUs(KEEP_GRACE_US)
            continue
        if s == NULL:
            _sleeping = 1
            zwait(0)
            _sleeping = 0
            _wakeups += 1
            continue
        if not idleCore():
            zwait(IDLE_BACKOFF_MS)
            continue
        h.zero.current = s
        since = nowNs()
        while h.zero.current == s and s.zeroed < spanBytes(s) and not _exiting:
            off = s.zeroed
            n = spanBytes(s) - off
            if n > ZERO_CHUNK:
                n = ZERO_CHUNK
            pa_storeptr(<void**>&h.zero.busy, s)
            zunlock(ZLOCK)
            done = clearDirty(s.startAddr + off, s.startAddr + off + n)
            zlock(ZLOCK)
            s.zeroed = off + n
            pa_add64(&h.clearedAhead, done)
            # After s.zeroed: a taker reads it once busy has let go.
            pa_storeptr(<void**>&h.zero.busy, NULL)
            if nowNs() - since > IDLE_RECHECK_NS:
                since = nowNs()
                if not idleCore():
                    break
        if h.zero.current == s:
            h.zero.current = NULL
    _running = 0
    zbroadcast(ZCOND)
    zunlock(ZLOCK)
    return NULL


cdef void zeroWorkerInfo(int* running, int* sleeping, uint64_t* wakeups, int* idle) noexcept nogil:
    zlock(ZLOCK)
    running[0] = _running
    sleeping[0] = _sleeping
    wakeups[0] = _wakeups
    idle[0] = _idle
    zunlock(ZLOCK)


cdef void zeroSetIdle(int verdict) noexcept nogil:
    """Tests: make idleCore() say verdict (1 idle, 0 busy), or look again
    at the machine (-1); wakes the worker."""
    global _idleOverride, _idleChecked
    zlock(ZLOCK)
    _idleOverride = verdict
    _idleChecked = 0
    zbroadcast(ZCOND)
    zunlock(ZLOCK)


cdef void zeroStop() noexcept nogil:
    """Stop the worker (interpreter exit): it ends after its current chunk;
    waits for that, a bounded time. Queued spans stay queued, and callers
    clear them when they take them."""
    global _exiting
    cdef int k
    zlock(ZLOCK)
    _exiting = 1
    zbroadcast(ZCOND)
    for k in range(100):
        if not _running:
            break
        zwait(10)
    zunlock(ZLOCK)


# ---------------------------------------------------------------------------
# fork: the lock is taken around it (after the allocator's locks, see
# _mcache's handlers, which run first); the child has no worker.

cdef void atforkPrepare() noexcept nogil:
    zlock(ZLOCK)


cdef void atforkParent() noexcept nogil:
    zunlock(ZLOCK)


cdef void atforkChild() noexcept nogil:
    """The worker did not come along: forget it and what it was inside (a
    chunk it had not finished is not counted in s.zeroed, so a span may be
    clearer than recorded, never less); a new worker starts with the next
    queued span. The page tables file is the parent's: open ours."""
    global _running, _sleeping, _idleChecked
    cdef mheap* h = _heaps
    while h != NULL:
        h.zero.current = NULL
        h.zero.busy = NULL
        h = h.zero.next
    _running = 0
    _sleeping = 0
    _idleChecked = 0
    zreinit()
    pmOpen()


clearInit()
pmOpen()
_cpus = usableCPUs()
pthread_atfork(atforkPrepare, atforkParent, atforkChild)


def _stop_worker():
    """atexit: stop the worker before the interpreter finalizes."""
    with nogil:
        zeroStop()


import atexit
atexit.register(_stop_worker)
