# cython: language_level=3, boundscheck=False, wraparound=False
"""An example of another package using pyarena's C-level API: it does
``from pyarena cimport Heap`` and allocates with and without the GIL.
Built by tests/test_extending.py at test time, as NumPy's test_extending
builds its examples."""

from cython.parallel cimport prange
from libc.stdint cimport uintptr_t, uint8_t
from libc.stdlib cimport malloc as libc_malloc, free as libc_free
from pyarena cimport Heap, pyarena_allocator


cdef bint fill_check(uint8_t* p, size_t n, uint8_t v, bint check) noexcept nogil:
    cdef size_t i
    for i in range(n):
        if check:
            if p[i] != v:
                return False
        else:
            p[i] = v
    return True


def with_gil(Heap h, Py_ssize_t n, size_t size):
    """malloc n blocks, write a pattern, check it, free them. Also calloc
    (must read zero), realloc (keeps the contents), usable_size. Returns
    the number of blocks that passed every check."""
    cdef Py_ssize_t i, ok = 0
    cdef void** ptrs = <void**>libc_malloc(n * sizeof(void*))
    for i in range(n):
        ptrs[i] = h.malloc(size)
        if ptrs[i] != NULL and h.usable_size(ptrs[i]) >= size:
            fill_check(<uint8_t*>ptrs[i], size, <uint8_t>(i & 255), False)
    for i in range(n):
        if ptrs[i] != NULL and fill_check(<uint8_t*>ptrs[i], size, <uint8_t>(i & 255), True):
            ptrs[i] = h.realloc(ptrs[i], 2 * size)
            if ptrs[i] != NULL and fill_check(<uint8_t*>ptrs[i], size, <uint8_t>(i & 255), True):
                ok += 1
        h.free(ptrs[i])
    for i in range(n):
        ptrs[i] = h.calloc(size, 1)
        if ptrs[i] == NULL or not fill_check(<uint8_t*>ptrs[i], size, 0, True):
            ok -= 1
        h.free(ptrs[i])
    libc_free(ptrs)
    return ok


cdef Py_ssize_t alloc_range(Heap h, void** ptrs, Py_ssize_t lo, Py_ssize_t hi,
                            size_t size) noexcept nogil:
    cdef Py_ssize_t i, ok = 0
    cdef size_t sz
    for i in range(lo, hi):
        sz = size + <size_t>(i % 7) * 24
        ptrs[i] = h.calloc(1, sz)
        if ptrs[i] != NULL and fill_check(<uint8_t*>ptrs[i], sz, 0, True):
            fill_check(<uint8_t*>ptrs[i], sz, <uint8_t>(i & 255), False)
            ok += 1
    return ok


cdef Py_ssize_t check_free_range(Heap h, void** ptrs, Py_ssize_t lo, Py_ssize_t hi,
                                 size_t size) noexcept nogil:
    cdef Py_ssize_t i, ok = 0
    cdef size_t sz
    for i in range(lo, hi):
        sz = size + <size_t>(i % 7) * 24
        if ptrs[i] != NULL and fill_check(<uint8_t*>ptrs[i], sz, <uint8_t>(i & 255), True):
            ok += 1
        h.free(ptrs[i])
    return ok


def without_gil(Heap h, int nthreads, Py_ssize_t per_thread, size_t size, int rounds):
    """prange over nthreads threads, no GIL: each thread allocates
    per_thread blocks (calloc: must read zero) and writes a pattern; then
    each thread checks and frees the blocks ANOTHER thread allocated, so
    slots are freed by threads that do not cache their spans. Returns the
    number of blocks that passed both checks, over all rounds."""
    cdef Py_ssize_t total = nthreads * per_thread
    cdef void** ptrs = <void**>libc_malloc(total * sizeof(void*))
    cdef Py_ssize_t good = 0, t, r, other
    for r in range(rounds):
        for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule="static",
                        chunksize=1):
            alloc_range(h, ptrs, t * per_thread, (t + 1) * per_thread, size)
        for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule="static",
                        chunksize=1):
            other = (t + 1) % nthreads
            good += check_free_range(h, ptrs, other * per_thread, (other + 1) * per_thread,
                                     size)
    libc_free(ptrs)
    return good


def double_free(Heap h):
    """Free one pointer twice and a pointer the heap never made."""
    cdef void* p = h.malloc(64)
    cdef int x = 0
    h.free(p)
    h.free(p)
    h.free(<void*>&x)
    h.free(NULL)


def interleaved(Heap h, int nthreads, Py_ssize_t per_thread, size_t size, int rounds):
    """prange, no GIL: in round r each thread allocates per_thread blocks
    while, at the same time, it frees the blocks the next thread allocated
    in round r - 1. So one thread's frees land in spans another thread's
    cache is allocating from and sweeping, concurrently. Returns the
    number of blocks whose pattern survived until their free."""
    cdef Py_ssize_t total = nthreads * per_thread
    cdef void** a = <void**>libc_malloc(total * sizeof(void*))
    cdef void** b = <void**>libc_malloc(total * sizeof(void*))
    cdef void** cur
    cdef void** prev
    cdef Py_ssize_t good = 0, t, other, r, i
    for i in range(total):
        a[i] = NULL
        b[i] = NULL
    for r in range(rounds + 1):
        cur = a if r % 2 == 0 else b
        prev = b if r % 2 == 0 else a
        for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule="static",
                        chunksize=1):
            other = (t + 1) % nthreads
            good += interleave_one(h, cur, prev, t * per_thread, other * per_thread,
                                   per_thread, size, r < rounds, r > 0)
    libc_free(a)
    libc_free(b)
    return good


cdef Py_ssize_t interleave_one(Heap h, void** cur, void** prev, Py_ssize_t mine,
                               Py_ssize_t theirs, Py_ssize_t n, size_t size,
                               bint alloc, bint release) noexcept nogil:
    cdef Py_ssize_t i, ok = 0
    cdef size_t sz
    for i in range(n):
        if alloc:
            sz = size + <size_t>((mine + i) % 5) * 16
            cur[mine + i] = h.malloc(sz)
            if cur[mine + i] != NULL:
                fill_check(<uint8_t*>cur[mine + i], sz, <uint8_t>((mine + i) & 255), False)
        if release:
            sz = size + <size_t>((theirs + i) % 5) * 16
            if prev[theirs + i] != NULL and fill_check(<uint8_t*>prev[theirs + i], sz,
                                                        <uint8_t>((theirs + i) & 255), True):
                ok += 1
            h.free(prev[theirs + i])
            prev[theirs + i] = NULL
    return ok


# -- the C-level API one call at a time, for a state machine ----------------
# (test_extending's hypothesis model drives these.)

def c_malloc(Heap h, size_t n):
    return <uintptr_t>h.malloc(n)


def c_calloc(Heap h, size_t n, size_t size):
    return <uintptr_t>h.calloc(n, size)


def c_realloc(Heap h, uintptr_t p, size_t n):
    return <uintptr_t>h.realloc(<void*>p, n)


def c_free(Heap h, uintptr_t p):
    h.free(<void*>p)


def c_usable_size(Heap h, uintptr_t p):
    return h.usable_size(<void*>p)


def c_table(Heap h):
    """The heap's function table, called directly: (malloc'd address,
    usable size) of a 100-byte allocation, freed again."""
    cdef const pyarena_allocator* a = h.allocator()
    cdef void* p = a.malloc(a.ctx, 100)
    cdef size_t n = a.usable_size(a.ctx, p)
    a.free(a.ctx, p)
    return <uintptr_t>p, n


def write(uintptr_t p, size_t n, int byte):
    cdef size_t i
    for i in range(n):
        (<uint8_t*>p)[i] = <uint8_t>byte


def read(uintptr_t p, size_t n):
    return (<char*>p)[:n]
