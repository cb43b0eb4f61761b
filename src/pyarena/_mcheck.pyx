# cython: language_level=3
"""Heap verification: Heap.check() walks every span and object of a heap
and checks the invariants the other modules keep (mimalloc's
_mi_page_is_valid and mi_heap_check, Go's debug checks of the page heap).

What is checked, with the module whose invariant it is:

  _mheap   free runs never touch or overlap an in-use span, and each is
           recorded at its first and last page; every page of an in-use
           span maps back to it (spanOf); pagesInUse, pagesMapped and
           pagesReleased equal what the walk counts; released <= idle.
  _mspan   per small span: allocCount is the number of allocated slots
           (below freeindex, or set in allocBits); every freed-but-unswept
           slot is allocated; nfreed matches freeBits; allocCache is the
           complement of allocBits from freeindex on.
  _mcentral a span no cache holds is on the list its counts say, and a
           span with nothing live is not kept (except the class's spares).
  _mcache  the spare pages (central spares, large spares) add up.
  counts   live objects found (tiny values by their block's count) equal
           mallocs - frees.
  _mdebug  on a debug heap: redzones intact, freed slots unwritten.

The walk never follows a span pointer it has not checked lies in the
heap's metadata (persistent chunks), so damaged metadata gives a finding,
not a crash. It holds every central lock and the heap lock (in the
allocator's order) while it reads; spans that another thread's cache is
allocating from at that moment change without locks and are checked only
for what their owner cannot change under us, and the count identities are
checked only when no other thread has a cache of the heap (they are exact
only then). On a debug heap (_mdebug) it also checks every live object's
redzone and every freed slot's pattern, holding the debug lock first.
"""

from libc.stdint cimport uint64_t, uintptr_t, int32_t
from libc.stdlib cimport malloc, realloc, free, qsort
from pyarena._types cimport (mheap, mspan, mcache, heapArena, mSpanList, mSpanInUse, mSpanFree,
                             inNoList, inPartial, inFull, inFreePages, inSpare,
                             PAGE_SHIFT, PAGE_SIZE, PAGES_PER_ARENA, NUM_SIZE_CLASSES,
                             MAX_FREE_LIST_PAGES, BITMAP_WORDS, TINY_SIZE_CLASS,
                             PERSISTENT_CHUNK_SIZE, pyarena_class_to_size,
                             pyarena_class_to_nelems, pa_lock, pa_unlock, pa_load64, pa_load32,
                             pa_load8)
from pyarena._mspan cimport popcount64, ctz64, objIndex
from pyarena._mheap cimport spanOf, arenaOf
from pyarena._mzero cimport zeroCheck
from pyarena._mcache cimport threadSelf
from pyarena._mdebug cimport redzoneDamage, freedDamage

from collections import namedtuple

__all__ = ["HeapCorruptionError", "HeapProblem"]


HeapProblem = namedtuple("HeapProblem", ["kind", "address", "size"])
HeapProblem.__doc__ = """One finding of ``Heap.check()``: ``kind`` names the
invariant that does not hold (see _mcheck.pyx), ``address`` and ``size``
the memory it concerns (for a count, the count found and the count
expected)."""


# Kinds whose address and size are counts (found, expected), not memory.
_COUNT_KINDS = {"objects", "pages-inuse", "pages-mapped", "pages-released", "pages-spare"}


def _describe(p):
    if p.kind in _COUNT_KINDS:
        return f"{p.kind}: counted {p.address}, recorded {p.size}"
    return f"{p.kind} at {p.address:#x} ({p.size} bytes)"


class HeapCorruptionError(RuntimeError):
    """``Heap.check()`` found the heap damaged, or a debug heap found an
    overflow, a write after free or a bad free. ``problems`` lists each
    finding as a ``HeapProblem`` (kind, address, size); ``notes`` holds a
    debug heap's full reports of them (offsets, allocation stacks)."""

    def __init__(self, problems, notes=()):
        self.problems = list(problems)
        self.notes = list(notes)
        shown = "; ".join(_describe(p) for p in self.problems[:5])
        more = f" and {len(self.problems) - 5} more" if len(self.problems) > 5 else ""
        text = (f"pyarena heap corrupted: {len(self.problems)} "
                f"problem{'s' if len(self.problems) != 1 else ''}: {shown}{more}")
        if self.notes:
            text += "\n" + "\n".join(self.notes[:5])
        super().__init__(text)


cdef enum:
    P_BAD_RECORD = 0       # a span pointer outside the heap's metadata
    P_SPANS_INDEX          # spans[] disagrees inside an in-use span
    P_FREE_RUN             # a free run badly recorded (state, list, ends)
    P_FREE_RUNS_TOUCH      # two free runs touch (not coalesced) or overlap
    P_FREE_OVERLAP         # a free run overlaps an in-use span
    P_ALLOC_COUNT          # allocCount differs from the allocated slots
    P_FREE_BITS            # a freed slot is not allocated
    P_NFREED               # nfreed larger than the freed bits
    P_ALLOC_CACHE          # allocCache out of step with allocBits
    P_SPAN_LIST            # an uncached span on the wrong list
    P_EMPTY_KEPT           # an uncached span with nothing live kept
    P_LARGE                # a large span's state is impossible
    P_PAGES_INUSE
    P_PAGES_MAPPED
    P_PAGES_RELEASED
    P_PAGES_SPARE
    P_OBJECTS              # live objects found != mallocs - frees
    P_FREEINDEX            # freeindex past nelems
    P_REDZONE              # debug heap: a live object's redzone damaged
    P_FREED_WRITTEN        # debug heap: a freed slot's pattern changed
    NKINDS

KIND_NAMES = ("bad-span-record", "spans-index", "free-run", "free-runs-touch",
              "free-run-overlap", "alloc-count", "free-bits", "nfreed", "alloc-cache",
              "span-list", "empty-span-kept", "large-span", "pages-inuse", "pages-mapped",
              "pages-released", "pages-spare", "objects", "freeindex", "redzone",
              "freed-slot-written")

cdef struct problem:
    int kind
    uintptr_t addr
    uintptr_t size

cdef struct run:
    uintptr_t start
    uintptr_t npages

cdef struct checker:
    mheap* h
    problem* probs
    int nprobs
    int cap
    uintptr_t me
    bint quiet             # no other thread has a cache of the heap
    mcache* mine           # the calling thread's cache, or NULL
    uintptr_t metaLo       # the last persistent chunk a span was found in
    uintptr_t metaHi
    uint64_t objects       # live objects found
    uint64_t sparePages


cdef void report(checker* k, int kind, uintptr_t addr, uintptr_t size) noexcept nogil:
    cdef problem* p
    if k.nprobs == k.cap:
        if k.cap >= 1 << 16:
            return          # enough to say it is broken
        p = <problem*>realloc(k.probs, sizeof(problem) * (k.cap * 2 + 16))
        if p == NULL:
            return
        k.probs = p
        k.cap = k.cap * 2 + 16
    k.probs[k.nprobs].kind = kind
    k.probs[k.nprobs].addr = addr
    k.probs[k.nprobs].size = size
    k.nprobs += 1


cdef bint validSpan(checker* k, mspan* s) noexcept nogil:
    """Whether s lies wholly in one of the heap's persistent chunks (span
    records are carved from them), so that reading it cannot fault."""
    cdef uintptr_t p = <uintptr_t>s
    cdef void* c
    if p >= k.metaLo and p + sizeof(mspan) <= k.metaHi:
        return True
    c = k.h.persistent.chunks
    while c != NULL:
        if <uintptr_t>c < p and p + sizeof(mspan) <= <uintptr_t>c + PERSISTENT_CHUNK_SIZE:
            k.metaLo = <uintptr_t>c
            k.metaHi = <uintptr_t>c + PERSISTENT_CHUNK_SIZE
            return True
        c = (<void**>c)[0]
    return False


cdef int cmpRun(const void* a, const void* b) noexcept nogil:
    cdef uintptr_t x = (<run*>a).start
    cdef uintptr_t y = (<run*>b).start
    return -1 if x < y else (1 if x > y else 0)


cdef uintptr_t countScavRange(mheap* h, uintptr_t base, uintptr_t npages) noexcept nogil:
    cdef uintptr_t n = 0, a, i
    cdef heapArena* ha
    a = base
    while a < base + (npages << PAGE_SHIFT):
        ha = arenaOf(h, a)
        if ha == NULL:
            return n
        i = (a - ha.base) >> PAGE_SHIFT
        n += (ha.scav[i >> 6] >> (i & 63)) & 1
        a += PAGE_SIZE
    return n


cdef bint ownedByOther(checker* k, mspan* s) noexcept nogil:
    """s is cached by another thread's cache (its owner may be allocating
    from it right now)."""
    if not pa_load8(&s.incache):
        return False
    if k.mine != NULL and k.mine.alloc[s.sizeclass] == s:
        return False
    return True


cdef void checkSmallSpan(checker* k, mspan* s) noexcept nogil:
    cdef unsigned int n = s.nelems
    cdef unsigned int fi = s.freeindex
    cdef unsigned int w, nw, i, valid, count = 0, freed = 0, bit
    cdef uint64_t allocated, fb, lb, window, mask
    cdef bint other = ownedByOther(k, s)
    cdef uint64_t live = 0
    cdef int32_t nfreed
    if s.sizeclass >= NUM_SIZE_CLASSES or n == 0 or n > BITMAP_WORDS * 64 or \
            n != pyarena_class_to_nelems[s.sizeclass] or \
            s.elemsize != pyarena_class_to_size[s.sizeclass]:
        report(k, P_BAD_RECORD, s.startAddr, s.npages << PAGE_SHIFT)
        return
    if other:
        return              # its owner changes it without locks
    if fi > n:
        report(k, P_FREEINDEX, s.startAddr, s.npages << PAGE_SHIFT)
        return
    nw = (n + 63) >> 6
    for w in range(nw):
        allocated = s.allocBits[w]
        if fi >= (w << 6) + 64:
            allocated = ~(<uint64_t>0)
        elif fi > (w << 6):
            allocated |= ((<uint64_t>1) << (fi - (w << 6))) - 1
        if (w << 6) + 64 > n:
            allocated &= ((<uint64_t>1) << (n - (w << 6))) - 1
        fb = pa_load64(&s.freeBits[w])
        lb = s.localFreeBits[w]
        count += popcount64(allocated)
        freed += popcount64(fb)
        if (fb | lb) & ~allocated:
            report(k, P_FREE_BITS, s.startAddr + ((w << 6) + ctz64((fb | lb) & ~allocated)) * s.elemsize, s.elemsize)
        mask = allocated & ~(fb | lb)
        if s.sizeclass == TINY_SIZE_CLASS and s.tinyRefs != NULL:
            while mask:
                i = (w << 6) + ctz64(mask)
                mask &= mask - 1
                if s.tinyRefs[i] != 0:
                    live += s.tinyRefs[i]
                    if k.mine != NULL and k.mine.tiny != 0 and \
                            k.mine.tinyspan == s and objIndex(s, k.mine.tiny) == i:
                        live -= 1       # the cache's own reference
                else:
                    live += 1
        else:
            live += popcount64(mask)
    if count != s.allocCount:
        report(k, P_ALLOC_COUNT, s.startAddr, s.npages << PAGE_SHIFT)
    nfreed = pa_load32(&s.nfreed)
    # A remote free sets its bit before it counts: more bits than nfreed is
    # a free in flight; fewer is damage.
    if <int32_t>freed < nfreed or (k.quiet and <int32_t>freed != nfreed):
        report(k, P_NFREED, s.startAddr, s.npages << PAGE_SHIFT)
    if fi < n:
        valid = 64 - (fi & 63)
        if valid > n - fi:
            valid = n - fi
        window = ~(s.allocBits[fi >> 6] >> (fi & 63))
        mask = ~(<uint64_t>0) if valid == 64 else (((<uint64_t>1) << valid) - 1)
        if (s.allocCache & mask) != (window & mask):
            report(k, P_ALLOC_CACHE, s.startAddr, s.npages << PAGE_SHIFT)
    k.objects += live
    if s.list == inSpare:
        k.sparePages += s.npages
        if s.allocCount != 0 or pa_load8(&s.incache):
            report(k, P_SPAN_LIST, s.startAddr, s.npages << PAGE_SHIFT)
        return
    if not pa_load8(&s.incache):
        if s.nfreedLocal != 0:
            report(k, P_NFREED, s.startAddr, s.npages << PAGE_SHIFT)
        if k.quiet and s.allocCount == <unsigned int>nfreed:
            report(k, P_EMPTY_KEPT, s.startAddr, s.npages << PAGE_SHIFT)
        if s.list == inPartial:
            if s.allocCount == n and nfreed == 0:
                report(k, P_SPAN_LIST, s.startAddr, s.npages << PAGE_SHIFT)
        elif s.list == inFull:
            if s.allocCount < n:
                report(k, P_SPAN_LIST, s.startAddr, s.npages << PAGE_SHIFT)
        else:
            report(k, P_SPAN_LIST, s.startAddr, s.npages << PAGE_SHIFT)


cdef void checkLargeSpan(checker* k, mspan* s) noexcept nogil:
    cdef uint64_t fb = pa_load64(&s.freeBits[0])
    if s.elemsize != s.npages << PAGE_SHIFT or s.nelems != 1:
        report(k, P_BAD_RECORD, s.startAddr, s.npages << PAGE_SHIFT)
        return
    if s.list == inSpare:
        k.sparePages += s.npages
        if s.allocCount != 0:
            report(k, P_LARGE, s.startAddr, s.npages << PAGE_SHIFT)
        return
    if s.allocCount != 1 or fb != 0 or pa_load32(&s.nfreed) != 0 or s.nfreedLocal != 0:
        report(k, P_LARGE, s.startAddr, s.npages << PAGE_SHIFT)
        return
    k.objects += 1


cdef void checkRedzones(checker* k, mspan* s) noexcept nogil:
    """A debug heap's span (_mdebug): every live object's redzone intact,
    every freed slot still holding the freed pattern. Exact, since the
    caller holds the debug lock that every debug allocation and free
    takes: no object is half made or half freed. A span whose record is
    damaged (reported by the span checks) is not read."""
    cdef unsigned int n = s.nelems, fi = s.freeindex, i
    cdef uintptr_t slot = s.elemsize, p
    cdef size_t size
    cdef bint allocated, freed
    if s.sizeclass == 0:
        if s.elemsize == s.npages << PAGE_SHIFT and s.allocCount == 1 and \
                not (pa_load64(&s.freeBits[0]) & 1) and s.list != inSpare:
            if redzoneDamage(s.startAddr, slot, &size) >= 0:
                report(k, P_REDZONE, s.startAddr, size)
        return
    if s.sizeclass >= NUM_SIZE_CLASSES or n == 0 or n > BITMAP_WORDS * 64 or \
            n != pyarena_class_to_nelems[s.sizeclass] or \
            slot != pyarena_class_to_size[s.sizeclass] or fi > n:
        return
    for i in range(n):
        p = s.startAddr + i * slot
        allocated = i < fi or (s.allocBits[i >> 6] >> (i & 63)) & 1
        freed = ((pa_load64(&s.freeBits[i >> 6]) | s.localFreeBits[i >> 6]) >> (i & 63)) & 1
        if allocated and not freed:
            if redzoneDamage(p, slot, &size) >= 0:
                report(k, P_REDZONE, p, size)
        elif freed or i < s.freshindex:
            if freedDamage(p, slot) >= 0:
                report(k, P_FREED_WRITTEN, p, slot)


cdef void walk(checker* k) noexcept nogil:
    cdef mheap* h = k.h
    cdef heapArena* ha
    cdef mspan* s
    cdef mspan* prev
    cdef mspan* t
    cdef uintptr_t i, a, page, guard, pages
    cdef uintptr_t inuse = 0, freePages = 0, released = 0
    cdef run* runs = NULL
    cdef uintptr_t nruns = 0, capruns = 0, r, ri
    cdef int li
    cdef mSpanList* lst
    cdef run* tmp
    # Free runs, from the free lists.
    guard = h.pagesMapped + 2
    for li in range(MAX_FREE_LIST_PAGES + 1):
        lst = &h.free[li] if li < MAX_FREE_LIST_PAGES else &h.freelarge
        s = lst.first
        while s != NULL and guard:
            guard -= 1
            if not validSpan(k, s):
                report(k, P_BAD_RECORD, <uintptr_t>s, 0)
                break
            if s.state != mSpanFree or s.list != inFreePages or s.npages == 0 or \
                    (li < MAX_FREE_LIST_PAGES and s.npages != <uintptr_t>li) or \
                    (li == MAX_FREE_LIST_PAGES and s.npages < MAX_FREE_LIST_PAGES) or \
                    spanOfAny(h, s.startAddr) != s or \
                    spanOfAny(h, s.startAddr + ((s.npages - 1) << PAGE_SHIFT)) != s:
                report(k, P_FREE_RUN, s.startAddr, s.npages << PAGE_SHIFT)
            if nruns == capruns:
                tmp = <run*>realloc(runs, sizeof(run) * (capruns * 2 + 64))
                if tmp == NULL:
                    break
                runs = tmp
                capruns = capruns * 2 + 64
            runs[nruns].start = s.startAddr
            runs[nruns].npages = s.npages
            nruns += 1
            freePages += s.npages
            released += countScavRange(h, s.startAddr, s.npages)
            s = s.next
        if guard == 0:
            report(k, P_FREE_RUN, 0, 0)      # a cycle in a free list
            break
    if nruns:
        qsort(runs, nruns, sizeof(run), cmpRun)
    for r in range(1, nruns):
        if runs[r - 1].start + (runs[r - 1].npages << PAGE_SHIFT) >= runs[r].start:
            report(k, P_FREE_RUNS_TOUCH, runs[r].start, runs[r].npages << PAGE_SHIFT)
    # In-use spans, from spans[] of every arena: a span is visited at its
    # first page, and every page of it must map back to it.
    ha = h.allArenas
    ri = 0
    while ha != NULL:
        prev = NULL
        for i in range(PAGES_PER_ARENA):
            s = ha.spans[i]
            if s == NULL or s == prev:
                continue
            prev = s
            if not validSpan(k, s):
                report(k, P_BAD_RECORD, ha.base + (i << PAGE_SHIFT), PAGE_SIZE)
                continue
            a = ha.base + (i << PAGE_SHIFT)
            if s.state == mSpanFree:
                # A free run is recorded at its first and last page only.
                if a != s.startAddr and a != s.startAddr + ((s.npages - 1) << PAGE_SHIFT):
                    report(k, P_SPANS_INDEX, a, PAGE_SIZE)
                continue
            if s.state != mSpanInUse or s.startAddr != a:
                # Inside an in-use span the entries repeat (a span may also
                # run on from the previous arena); anything else is an
                # entry that outlived its span.
                if s.state != mSpanInUse or a < s.startAddr or \
                        a >= s.startAddr + (s.npages << PAGE_SHIFT):
                    report(k, P_SPANS_INDEX, a, PAGE_SIZE)
                continue
            pages = s.npages
            if pages == 0 or pages > h.pagesMapped:
                report(k, P_BAD_RECORD, a, 0)
                continue
            inuse += pages
            page = a
            while page < a + (pages << PAGE_SHIFT):
                # The raw entry, compared as a pointer: a damaged entry is
                # never followed.
                if spanOfAny(h, page) != s:
                    report(k, P_SPANS_INDEX, page, PAGE_SIZE)
                    break
                page += PAGE_SIZE
            # Against the free runs (sorted): none may overlap it.
            while ri < nruns and runs[ri].start + (runs[ri].npages << PAGE_SHIFT) <= a:
                ri += 1
            if ri < nruns and runs[ri].start < a + (pages << PAGE_SHIFT):
                report(k, P_FREE_OVERLAP, runs[ri].start, runs[ri].npages << PAGE_SHIFT)
            if s.sizeclass == 0:
                checkLargeSpan(k, s)
            else:
                checkSmallSpan(k, s)
            if h.debug and s.redzones:
                checkRedzones(k, s)
        ha = ha.next
        ri = 0
    free(runs)
    if inuse != h.pagesInUse:
        report(k, P_PAGES_INUSE, inuse << PAGE_SHIFT, h.pagesInUse << PAGE_SHIFT)
    if inuse + freePages != h.pagesMapped:
        report(k, P_PAGES_MAPPED, (inuse + freePages) << PAGE_SHIFT, h.pagesMapped << PAGE_SHIFT)
    if released != h.pagesReleased or released > h.pagesMapped - (h.pagesInUse - pa_load64(&h.pagesSpare)):
        report(k, P_PAGES_RELEASED, released << PAGE_SHIFT, h.pagesReleased << PAGE_SHIFT)
    if k.sparePages != pa_load64(&h.pagesSpare):
        report(k, P_PAGES_SPARE, k.sparePages << PAGE_SHIFT, pa_load64(&h.pagesSpare) << PAGE_SHIFT)


cdef mspan* spanOfAny(mheap* h, uintptr_t p) noexcept nogil:
    """spans[] entry for the page of p, valid or not."""
    cdef heapArena* ha = arenaOf(h, p)
    if ha == NULL:
        return NULL
    return ha.spans[(p - ha.base) >> PAGE_SHIFT]


cdef uint64_t liveByCounts(mheap* h) noexcept nogil:
    """mallocs - frees, as stats() adds them (heap lock held)."""
    cdef uint64_t m = 0, f = 0
    cdef mcache* c
    cdef int i
    for i in range(NUM_SIZE_CLASSES):
        m += h.retiredMalloc[i]
        f += pa_load64(&h.nfree[i]) + h.retiredFree[i]
    c = h.caches
    while c != NULL:
        for i in range(NUM_SIZE_CLASSES):
            m += c.nmalloc[i]
            f += c.nfree[i]
        c = c.next
    return m - f


cdef object checkHeap(mheap* h):
    """Walk h (see the module header). Returns the number of live objects
    checked, or raises HeapCorruptionError listing every finding."""
    cdef checker k
    cdef mcache* c
    cdef int i
    cdef uint64_t counted
    cdef uintptr_t bad
    k.h = h
    k.probs = NULL
    k.nprobs = 0
    k.cap = 0
    k.me = threadSelf()
    k.quiet = True
    k.mine = NULL
    k.metaLo = k.metaHi = 0
    k.objects = 0
    k.sparePages = 0
    if h.debug:
        pa_lock(&h.dbgLock)       # before every other lock (_mdebug)
    for i in range(NUM_SIZE_CLASSES):
        pa_lock(&h.central[i].lock)
    pa_lock(&h.lock)
    c = h.caches
    while c != NULL:
        if c.owner == k.me:
            k.mine = c
        else:
            k.quiet = False
        c = c.next
    walk(&k)
    bad = zeroCheck(h)          # the zeroing queue (_mzero)
    if bad:
        report(&k, P_SPAN_LIST, bad, 0)
    if k.quiet:
        counted = liveByCounts(h)
        if counted != k.objects:
            report(&k, P_OBJECTS, k.objects, counted)
    pa_unlock(&h.lock)
    for i in range(NUM_SIZE_CLASSES - 1, -1, -1):
        pa_unlock(&h.central[i].lock)
    if h.debug:
        pa_unlock(&h.dbgLock)
    if k.nprobs == 0:
        free(k.probs)
        return k.objects
    try:
        problems = [HeapProblem(KIND_NAMES[k.probs[i].kind], k.probs[i].addr, k.probs[i].size)
                    for i in range(k.nprobs)]
    finally:
        free(k.probs)
    raise HeapCorruptionError(problems)
