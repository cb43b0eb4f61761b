# The allocator's private types, in one place (as mimalloc's types.h).
#
# Glossary, bottom up (see _malloc.pyx for the whole picture):
#
#   page       8 KiB, the page heap's unit (PAGE_SIZE); not the OS page.
#   heapArena  a 64 MiB, 64 MiB-aligned piece of reserved address space and
#              its metadata: which span owns each page (spans[]) and which
#              free pages are known to read as zero (scav[]).
#   mspan      a run of pages. In use, it holds one large object or nelems
#              slots of one size class; free, it is a run in the page heap.
#   mcentral   per size class: spans with free slots (partial) and without
#              (full) that no thread is allocating from.
#   mcache     per thread and heap: the span each size class allocates from
#              now, and the tiny block. Only its thread touches it.
#   mheap      one pyarena.Heap: arenas, the free page runs, the central
#              lists, the metadata allocators and the statistics.
#
# Locking (no GIL needed anywhere; the C API runs without it):
#   - an mcache belongs to one thread and is touched by it alone, so the
#     allocation fast path takes no lock;
#   - a slot may be freed by any thread: freeBits bits are set and nfreed
#     counted with atomic operations, and a span's owner sweeps by
#     exchanging freeBits words, so no free is lost; incache is read and
#     written sequentially consistently, so that a free racing with the
#     owner handing the span back is seen by one side or the other;
#   - mcentral.lock guards a class's lists and the spans on them (and
#     sweeping a span that is not cached); mheap.lock guards the page heap,
#     arenas, metadata allocators, the cache list and page statistics;
#     lock order: central, then heap; the registry of live heaps
#     (_mcache.pyx) is taken before either, never inside;
#   - a thread finds its cache through mheap.tcache, slots written only by
#     the thread the cache belongs to and checked against mcache.owner, so
#     a stale or colliding slot is never taken for the thread's own;
#   - statistics counters updated from free paths are atomic adds;
#   - the user-arena chunk pool (mheap.chunkPool) is touched with the GIL
#     held only: arenas are Python objects.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t, int64_t, int32_t, intptr_t

cdef extern from "pyarena_atomic.h" nogil:
    ctypedef struct pa_mutex:
        pass
    void pa_mutex_init(pa_mutex* m)
    void pa_lock(pa_mutex* m)
    void pa_unlock(pa_mutex* m)
    uint64_t pa_or64(uint64_t* p, uint64_t v)
    uint64_t pa_xchg64(uint64_t* p, uint64_t v)
    uint64_t pa_load64(const uint64_t* p)
    void pa_store64(uint64_t* p, uint64_t v)
    void pa_store64_relaxed(uint64_t* p, uint64_t v)
    void pa_add64(uint64_t* p, uint64_t v)
    int32_t pa_add32(int32_t* p, int32_t v)
    int32_t pa_load32(const int32_t* p)
    uint8_t pa_load8(const uint8_t* p)
    void pa_store8(uint8_t* p, uint8_t v)
    uint8_t pa_addu8(uint8_t* p, int v)
    uint16_t pa_load16(const uint16_t* p)
    void pa_store16(uint16_t* p, uint16_t v)
    void* pa_loadptr(void* const* p)
    void pa_storeptr(void** p, void* v)

# The public C-level function table (pyarena_capi.h), one per heap.
from pyarena._capi_h cimport pyarena_allocator

# What a debug heap tells AddressSanitizer and memcheck (empty without them).
cdef extern from "pyarena_sanitize.h" nogil:
    void memOpen "pyarena_mem_open"(uintptr_t p, size_t n)
    void memClose "pyarena_mem_close"(uintptr_t p, size_t n)
    void memMalloclike "pyarena_mem_malloclike"(uintptr_t p, size_t n, int zeroed)
    void memFreelike "pyarena_mem_freelike"(uintptr_t p)
    int sanitizerFlags "pyarena_sanitizer_flags"()


cdef extern from "sizeclasses.h" nogil:
    const uint32_t pyarena_class_to_size[]
    const uint8_t pyarena_class_to_allocnpages[]
    const uint16_t pyarena_class_to_nelems[]
    const uint16_t pyarena_class_to_minalign[]
    const uint32_t pyarena_class_to_divmagic[]
    const uint8_t pyarena_size_to_class8[]
    const uint8_t pyarena_size_to_class128[]
    const uint8_t pyarena_size_to_class8_align16[]


cdef enum:
    PAGE_SHIFT = 13
    PAGE_SIZE = 1 << PAGE_SHIFT             # Go: _PageSize, 8 KiB
    MAX_SMALL_SIZE = 32768                  # Go: _MaxSmallSize
    SMALL_SIZE_MAX = 1024                   # Go: smallSizeMax, end of size_to_class8
    NUM_SIZE_CLASSES = 68                   # Go: _NumSizeClasses, class 0 = large
    MAX_OBJS_PER_SPAN = 1024                # class 1: 8 KiB / 8 B
    BITMAP_WORDS = 16                       # MAX_OBJS_PER_SPAN / 64-bit words
    TINY_SIZE = 16                          # Go: maxTinySize
    TINY_SIZE_CLASS = 2                     # the 16-byte class holds tiny blocks

    # Heap arenas: 64 MiB on 64-bit Linux (Go: heapArenaBytes = 1 << 26).
    LOG_HEAP_ARENA_BYTES = 26
    PAGES_PER_ARENA = 8192                  # (1 << 26) / PAGE_SIZE
    SCAV_WORDS = 128                        # PAGES_PER_ARENA / 64
    # The arena index: 48-bit user addresses less the 26 in an arena leave
    # 22 bits, one level of 4M entries (Go on linux/amd64: arenaL1Bits 0,
    # arenaL2Bits 22). Its 32 MiB are mapped at once but read as zero until
    # written, so they cost a page of memory per 32 GiB of heap.
    ARENA_INDEX_BITS = 22
    ADDR_BITS = 48

    # The heap grows its mapped part in 4 MiB steps (Go: mheap.grow rounds
    # to 512 pages, one pallocChunk).
    HEAP_GROW_PAGES = 512
    # Free runs shorter than this sit in exact-size lists; longer in one list.
    MAX_FREE_LIST_PAGES = 128

    # Persistent metadata (Go: persistentChunkSize 256 KiB, maxBlock 64 KiB,
    # _FixAllocChunk 16 KiB).
    PERSISTENT_CHUNK_SIZE = 256 << 10
    PERSISTENT_MAX_BLOCK = 64 << 10
    FIX_ALLOC_CHUNK = 16 << 10

    # Largest span (4 MiB) an mcache keeps as its large spare.
    LARGE_SPARE_PAGES = 512
    # Go: memclrNoHeapPointersChunked clears 256 KiB between preemption points.
    CLEAR_CHUNK = 256 << 10
    # Chunks cleared between two looks at pending signals (1 MiB).
    CLEAR_GIL_CHUNKS = 4
    # mheap.tcache: slots of the thread -> mcache lookup (a power of two;
    # more threads than this still work, through getmcacheSlow).
    TCACHE_SLOTS = 64
    # Bytes of emptied spans a size class keeps for reuse (mcentral.spares);
    # at least one span is kept whatever its size.
    SPARE_BYTES = 256 << 10
    # Arena chunks a heap keeps for reuse after their arena is done.
    CHUNK_POOL_MAX = 4
    # Clearing ahead of time (_mzero): freed large objects of at least
    # ZERO_MIN_PAGES (2 MiB) wait in the heap's zeroing queue, at most
    # ZERO_QUEUE_SPANS of them and ZERO_QUEUE_PAGES (256 MiB) in all; the
    # worker clears ZERO_CHUNK at a time, so a taker waits at most that.
    ZERO_MIN_PAGES = 256
    ZERO_QUEUE_SPANS = 4
    ZERO_QUEUE_PAGES = 32768
    ZERO_CHUNK = 64 << 10


cdef extern from *:
    """
    /* Go: maxAlloc on linux/amd64, 1 << (heapAddrBits - 1) here: no request
       past it can be met whatever the machine. */
    #define PYARENA_MAX_ALLOC ((size_t)1 << 47)
    """
    size_t MAX_ALLOC "PYARENA_MAX_ALLOC"


# tracemalloc's view of the memory the faces hand to Python. An array that
# NumPy will free through a heap's handler is tracked in NumPy's domain
# (numpy.lib.tracemalloc_domain), because NumPy's free untracks it there;
# everything else the faces make (Blocks, typed values, arena chunks) in
# pyarena's own. The C-level API and the handler's own calls are not
# tracked here: their callers (NumPy, for the handler) do it.
cdef enum:
    NUMPY_TRACE_DOMAIN = 389047
    PYARENA_TRACE_DOMAIN = 0x70796172     # "pyar"

cdef extern from "Python.h":
    int PyTraceMalloc_Track(unsigned int domain, uintptr_t ptr, size_t size) noexcept
    int PyTraceMalloc_Untrack(unsigned int domain, uintptr_t ptr) noexcept


cdef enum spanState:
    mSpanDead = 0     # record not describing any memory (on a fixalloc list)
    mSpanInUse = 1    # holds slots of a size class or one large object
    mSpanFree = 2     # a run of free pages in the page heap


cdef enum spanList:
    inNoList = 0
    inPartial = 1
    inFull = 2
    inFreePages = 3
    inSpare = 4       # mcentral.spares: empty, swept, kept for reuse


cdef struct mheap
cdef struct mcache


cdef struct mspan:
    mspan* next
    mspan* prev
    uintptr_t startAddr       # first byte of the first page
    uintptr_t npages
    uintptr_t elemsize        # slot size; a large span's whole size
    uint32_t divMul           # Go: divMul, slot index = off * divMul >> 32
    uint16_t nelems           # slots in the span
    uint16_t freeindex        # slots below it are allocated (Go: freeindex)
    uint16_t allocCount       # slots allocated, freed-but-unswept included
    int32_t nfreed            # slots freed since the last sweep (atomic;
                              # may dip below 0 for an instant while a
                              # sweep takes a bit whose free is counting)
    uint16_t freshindex       # slots at and above it never held data since
                              # the span was made (zero unless needzero);
                              # for a large span, 1 = every page dirty, its
                              # scav bits stale (reused as an mcache's
                              # large spare)
    uintptr_t zeroLimit       # slots below this address may hold old data
                              # (the span's end if needzero, else the start
                              # of slot freshindex): one compare tells
                              # whether a slot must be cleared
    uint8_t sizeclass         # 0 for a large span
    uint8_t state             # spanState
    uint8_t needzero          # the span's pages may hold old data
    uint8_t incache           # an mcache allocates from it
    uint8_t list              # spanList: which list it is on
    uintptr_t zeroed          # a large span from the zeroing queue (_mzero):
                              # bytes from startAddr cleared ahead of time
    uint64_t allocCache       # complement of allocBits from freeindex on
    # The cache allocating from this span and its thread's thread pointer
    # (0 when no cache holds it): a free compares ownerThread with its own
    # thread pointer to know it may free without atomics. Written by the
    # owner alone; another thread reads 0, or a pointer not its own.
    uintptr_t ownerThread
    mcache* cache
    # Objects of this span that a heap profile sampled (atomic): while any
    # lives, ownerThread stays 0, so that every free goes the out-of-line
    # way, which tells the profile.
    int32_t nsampled
    # A debug heap's span whose objects carry redzones and whose freed
    # slots hold the freed pattern (_mdebug); 0 from initSpan on.
    uint8_t redzones
    uint8_t* tinyRefs         # class 2 spans used by the tiny allocator:
                              # live sub-objects (+1 for the cache) per slot
    # allocBits: 1 = slot allocated as of the last sweep. Slots below
    # freeindex count as allocated whatever their bit says (Go's rule).
    uint64_t allocBits[BITMAP_WORDS]
    # freeBits: 1 = freed by another thread, not yet swept (atomic). Go
    # finds dead objects by marking; here reference counting or the C API's
    # free tells us, one slot at a time.
    uint64_t freeBits[BITMAP_WORDS]
    # Frees by the thread whose cache holds the span: plain bit operations
    # and a plain count, no atomics (mimalloc's local free list, as bits).
    uint64_t localFreeBits[BITMAP_WORDS]
    uint16_t nfreedLocal
    # A free run: the scavenger generation it was freed in (insertFree
    # stamps it; _mgcpacer's background scavenger leaves young runs alone).
    uint32_t freeEpoch


cdef struct mSpanList:
    mspan* first
    mspan* last


cdef struct persistentAlloc:
    # Go: persistentAlloc + persistentChunks. Bump allocation in 256 KiB
    # chunks from the OS; chunks are listed through their first word so
    # they can be found (inPersistentAlloc) and, unlike Go, unmapped when
    # their heap is destroyed. Blocks >= 64 KiB get a mapping of their own.
    uintptr_t base            # current chunk
    uintptr_t off
    void* chunks              # chunk list, linked through word 0
    void* bigs                # own-mapping blocks, linked through word 0,
                              # word 1 holding the mapping's size
    uint64_t sys              # bytes mapped for metadata
    uint64_t nchunks
    # enableMetadataHugePages: new chunks come from huge-page-aligned
    # groups advised MADV_HUGEPAGE; [groupNext, groupEnd) is the group's
    # part not handed out yet.
    uint8_t huge
    uintptr_t groupNext
    uintptr_t groupEnd


cdef struct fixalloc:
    # Go: mfixalloc.go. Fixed-size records carved from persistent chunks,
    # recycled through a free list threaded through the records.
    uintptr_t size
    void* list
    uintptr_t chunk
    uintptr_t nchunk
    uintptr_t inuse           # bytes handed out and not freed
    persistentAlloc* persistent


cdef struct heapArena:
    mheap* heap
    heapArena* next           # all arenas of the heap
    uintptr_t base
    # 1 = the free page reads as zero: never touched since it was mapped, or
    # given back with sysUnused. For pages of an in-use large span the bit
    # says the page was zero when the span was allocated and has not been
    # cleared since; freeSpan clears it.
    uint64_t scav[SCAV_WORDS]
    # page -> span: every page of an in-use span; the first and last page
    # of a free run; NULL elsewhere (inside free runs, unmapped pages). So
    # a non-NULL entry of an in-use span is the span holding that page.
    mspan* spans[PAGES_PER_ARENA]


cdef struct mcentral:
    pa_mutex lock
    uint8_t sizeclass
    mSpanList partial         # spans with a free slot (swept or not)
    mSpanList full            # spans without
    # Emptied spans kept instead of freed, up to SPARE_BYTES a class: code
    # that makes and drops a thousand arrays at a time would otherwise take
    # every span through the page heap and back (freeSpan, allocSpan,
    # initSpan), and a class whose spans hold one or two objects (8 KiB and
    # up) would do so on every allocation.
    mSpanList spares
    uintptr_t sparePages
    uint64_t nspans


cdef struct mcache:
    mheap* heap
    mcache* next              # the heap's list of live caches
    mcache* prev
    uintptr_t owner           # its thread's thread pointer (getmcache); not
                              # the first word, which fixalloc's free list uses
    uintptr_t spanOwner       # the ownerThread its spans get: owner, or 0 on
                              # a debug heap (every free out of line)
    mspan* alloc[NUM_SIZE_CLASSES]  # &emptymspan when none
    uintptr_t tiny            # current tiny block, 0 if none
    uintptr_t tinyoffset
    mspan* tinyspan
    # The last large object (up to LARGE_SPARE_PAGES) this thread freed,
    # kept for its next large allocation of the same size: no page-heap
    # trip for loops that make and drop big temporaries.
    mspan* largeSpare
    # Allocation counts of this thread (Go keeps them per P and flushes).
    uint64_t nmalloc[NUM_SIZE_CLASSES]   # [0]: large objects
    uint64_t allocBytes       # slot bytes handed out, cumulative
    # Frees made by this thread (in any span).
    uint64_t nfree[NUM_SIZE_CLASSES]
    uint64_t freedBytes
    # The allocation countdown (Go: c.nextSample): every allocation takes
    # its slot bytes off nextEvent; when it runs out, _mprof.mallocEvent
    # looks at what is due (a profile sample) and arms it again.
    int64_t nextEvent
    int64_t eventArmed        # what nextEvent was armed with
    int64_t nextSample        # bytes until the next profile sample
    int64_t memProfRate       # the heap's profile rate when last armed
    uint64_t rand             # the cache's random state (Go: cheaprand)
    # Bytes this thread may still take from the page heap and mcentral
    # before it looks at the pacer (Go: gcAssistBytes, deductAssistCredit).
    # Charged on the slow paths only (a span cached, a large object), so
    # the fast path never sees it; _mgcpacer.paceCheck refills it.
    int64_t gcCredit


cdef struct mzero:
    # A heap's part in clearing ahead of time (_mzero.pyx). Guarded by
    # _mzero's lock, a leaf: no other lock is taken while it is held.
    uint8_t on                # freed large spans go to the queue
    mheap* next               # the worker's list of heaps with prezero on
    mSpanList queue           # freed large spans (list inSpare), oldest first
    uintptr_t npages          # pages on the queue
    uintptr_t nspans
    mspan* current            # the queued span the worker is clearing
    mspan* busy               # the span the worker is inside a chunk of
                              # now (atomic): a taker waits for it to go
    int64_t lastKeep          # when the newest span was queued (ns)


cdef struct arenaReservation:
    arenaReservation* next
    uintptr_t base
    uintptr_t size


cdef enum:
    DBG_FINDINGS = 64

# One finding of a debug heap (_mdebug), for Heap.check() and the face.
cdef struct dbgFinding:
    int kind                  # DBG_* in _mdebug.pxd
    uintptr_t addr            # the object (or the pointer freed)
    uintptr_t size            # its requested size (slot size when unknown)
    intptr_t offset           # first damaged byte from addr; -1 if none
    uintptr_t other           # the second address of a bad free (its slot)
    void* bucket              # the allocation's profile bucket, or NULL


# The pacer and the limits of one heap (_mgcpacer.pyx; Go: gcControllerState
# in mgcpacer.go, the scavenger's state in mgcscavenge.go). Pages are
# PAGE_SIZE; a limit of 0 pages means none.
cdef struct mpacer:
    int64_t gogc              # percent (Go: GOGC); -1 off
    uint64_t heapMarked       # heap_alloc after the last paced collection
    uint64_t nextGC           # heap_alloc at which a collection is requested
    uint64_t triggered        # collections the pacer ran (atomic)
    int32_t pending           # a request is queued with Py_AddPendingCall (atomic)
    mheap* pacedNext          # the list of paced heaps (_mgcpacer; GIL held)
    uint8_t paced             # on it
    uint64_t limitPages       # soft limit on pagesMapped - pagesReleased
    uint64_t maxPages         # hard cap on the same
    int64_t limitBytes        # the limits as asked for, in bytes; -1 none
    int64_t maxBytes
    uint64_t limitReleased    # pages released to stay under either
    uint64_t capRefused       # allocations the hard cap refused
    # The background scavenger: whether it looks at this heap, its list
    # of heaps, the generation free runs are stamped with, pages it gave
    # back.
    uint8_t scavOn
    mheap* scavNext
    uint32_t epoch
    uint64_t bgReleased
    # enableMetadataHugePages: metadata chunks are advised MADV_HUGEPAGE.
    uint8_t metaHuge


cdef struct mheap:
    uint64_t serial                     # unique per heap in the process
    pa_mutex lock
    # Lifetime: the Heap object holds one reference, its NumPy allocator
    # capsule another (arrays that own heap memory hold the capsule). The
    # mheap is destroyed when both are gone (with the GIL held, by
    # whichever drops the last).
    uint64_t refs
    mheap* regNext                      # the registry of live heaps
    mheap* regPrev
    uint64_t invalidFrees               # frees of pointers not live here
    uint8_t closed                      # Heap.close(): no more allocation
    # closed | debug << 1: the C-level slow path tests both at once.
    uint8_t special
    # Heap profiling (_mprof): bytes per sample (0 off; atomic), which
    # sampler draws the intervals, and the buckets, made on first use.
    int64_t profileRate
    uint8_t sampler                     # 0: exponential (fastexprand); 1: uniform (NoFP)
    void* prof
    # The debug heap (_mdebug): set before the first allocation, never
    # changed. Its lock orders every debug allocation and free with
    # Heap.check(): taken before any other allocator lock (central, heap,
    # profile), never with the GIL wanted while held.
    uint8_t debug
    pa_mutex dbgLock
    uint64_t corruptions                # redzones and freed slots found damaged
    dbgFinding dbgFindings[DBG_FINDINGS]  # the latest, for the Python API
    uint32_t dbgNFindings               # findings recorded (the ring wraps)
    uint32_t dbgTaken                   # findings handed to Python so far
    # getmcache's lookup, by a hash of the thread pointer. A slot holds the
    # cache of the last thread that missed there; a reader checks
    # owner == its own thread pointer. Written only by the cache's own
    # thread (install, and clear when its caches go back).
    mcache* tcache[TCACHE_SLOTS]
    # User-arena chunks given back by their arenas, with how far each may
    # hold old data (Go: mheap.userArena's reuse list). GIL held.
    mspan* chunkPool[CHUNK_POOL_MAX]
    uintptr_t chunkDirty[CHUNK_POOL_MAX]
    int npool
    heapArena** arenaIndex              # address >> 26 -> its heapArena
    heapArena* allArenas
    arenaReservation* reservations
    # Go: curArena. The unmapped tail of the newest reservation.
    uintptr_t curArenaBase
    uintptr_t curArenaEnd

    mSpanList free[MAX_FREE_LIST_PAGES]  # free runs of exactly i pages
    mSpanList freelarge                  # free runs of >= 128 pages
    mcentral central[NUM_SIZE_CLASSES]

    persistentAlloc persistent
    fixalloc spanalloc
    fixalloc cachealloc
    fixalloc tinyrefalloc
    mcache* caches

    # statistics (see MemStats); pages are PAGE_SIZE
    uint64_t pagesMapped      # heap_sys
    uint64_t pagesInUse       # heap_inuse
    uint64_t pagesReleased    # heap_released (free pages reading zero)
    uint64_t pagesSpare       # in spare spans (mcentral.spare): in use for
                              # the page heap, idle for MemStats, as Go
                              # counts a span with no object (atomic)
    uint64_t nfree[NUM_SIZE_CLASSES]    # frees by threads without a cache (atomic)
    uint64_t freedBytes
    uint64_t retiredMalloc[NUM_SIZE_CLASSES]  # counts of ended threads
    uint64_t retiredAllocBytes
    uint64_t retiredFree[NUM_SIZE_CLASSES]
    uint64_t retiredFreedBytes
    uint64_t nsweeps
    uint64_t ngrow
    # Clearing large objects (_mzero; atomic): bytes cleared by the worker,
    # by the allocating thread, and not cleared because known zero.
    mzero zero
    uint64_t clearedAhead
    uint64_t clearedByCaller
    uint64_t clearSkipped
    mpacer pacer
