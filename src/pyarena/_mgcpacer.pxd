# The pacer, the memory limits and the background scavenger (Go:
# mgcpacer.go, mgcscavenge.go). See _mgcpacer.pyx.
from libc.stdint cimport int64_t, uint64_t
from pyarena._types cimport mheap, mcache

cdef void paceCheck(mcache* c) noexcept nogil
cdef uint64_t heapAllocNow(mheap* h) noexcept nogil
cdef void scavEnable(mheap* h) noexcept nogil
cdef void scavDisable(mheap* h) noexcept nogil
cdef void requestGC(mheap* h) noexcept nogil
cdef void pacerEnable(mheap* h) noexcept
cdef void pacerForget(mheap* h) noexcept
cdef void setGoal(mheap* h, uint64_t marked) noexcept nogil


cdef inline void chargeCredit(mcache* c, int64_t nbytes) noexcept nogil:
    """Charge nbytes taken from the page heap or mcentral (a span cached for
    its free slots, a large object) against the thread's credit (Go:
    deductAssistCredit); out of credit, look at the pacer. Called on the
    slow paths only, with no allocator lock held, except on a debug heap,
    whose allocations run under its debug lock: there debugMalloc looks
    once it has let go."""
    c.gcCredit -= nbytes
    if c.gcCredit < 0 and not c.heap.debug:
        paceCheck(c)
