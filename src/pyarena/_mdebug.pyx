# cython: language_level=3
"""The debug heap: redzones after objects, fill patterns, and the reports
of what they catch (Go's computeRZlog, under -asan in malloc.go; mimalloc's
debug mode; CPython's PYTHONMALLOC=debug).

A debug heap (Heap(debug=True), PYARENA_DEBUG=1 for the default heap) puts
every allocation of n bytes in a slot of at least n + redzoneSize(n)
bytes. The slot's layout:

    [0, n)               the object: zero, or FRESH_BYTE when not cleared
    [n, slot - 8)        CANARY_BYTE: an overflow writes here first
    [slot - 8, slot)     n, keyed by the slot's address (the size word), so
                         that the free knows where the object ends

When the object is freed the size word and the canary are checked, and the
whole slot is filled with FREED_BYTE; when a small slot is handed out
again it must still hold only FREED_BYTE, or it was written after its free.
Heap.check() walks the same: every live object's redzone, every freed slot
of a debug span (_mcheck). What is found is counted (MemStats.corruptions
for damage, invalid_frees for bad frees), warned about (HeapCorruptionWarning,
a RuntimeWarning, naming the address, the size, the first damaged byte and,
when the heap profile sampled the allocation, its stack), and kept for the
Python API: the heap's next allocation from Python, or check(), raises
HeapCorruptionError with it.

The debug paths are reached without a test on any fast path: a debug heap
never installs its caches in the fast lookup slots (_mcache), so every
allocation misses there and goes to the slow paths, which branch to
debugMalloc (_malloc); and its spans never get an owner thread, so every
free goes out of line (freeRemote, freeOther), where the debug free is.
A release heap pays nothing but a flag test on those rare paths.

Locking: h.dbgLock orders each debug allocation and free (the pattern
checked, the object made or freed, the redzone armed) against the others
and against Heap.check(), so that check() never sees half a debug
operation. It is taken before every other allocator lock and never held
while the GIL is waited for: reports are made after it is released.
"""

from libc.stdint cimport uintptr_t, intptr_t, uint64_t, uint8_t, uint32_t
from libc.string cimport memset
from pyarena._types cimport (memOpen, memClose, memFreelike, mheap, mspan, DBG_FINDINGS, dbgFinding, PAGE_SHIFT, pa_add64,
                             pa_lock, pa_unlock)
from pyarena._mprof cimport bucketStack

import warnings


class HeapCorruptionWarning(RuntimeWarning):
    """A debug heap found memory damaged (an overflow into a redzone, a
    write after free) or a bad free. Turn it into an error with
    ``warnings.simplefilter("error", pyarena.HeapCorruptionWarning)``."""


cdef extern from *:
    """
    /* The size word's key: the slot's address mixed in, so that a size
       word copied from another slot (or stale data) does not read as one. */
    static inline uintptr_t pyarena_size_key(uintptr_t p)
    { return (p * 0x9E3779B97F4A7C15ull) ^ 0xA5C3D2E1F0B49687ull; }
    """
    uintptr_t sizeKey "pyarena_size_key"(uintptr_t p) noexcept nogil


cdef uintptr_t slotOf(mspan* s) noexcept nogil:
    """Bytes of one slot of s: the class's size, a large span's pages."""
    return s.elemsize if s.sizeclass else s.npages << PAGE_SHIFT


cdef void armRedzone(uintptr_t p, size_t n, uintptr_t slot) noexcept nogil:
    """Canary after the n-byte object at p, and the size word at the end of
    its slot."""
    memset(<void*>(p + n), CANARY_BYTE, slot - 8 - n)
    (<uintptr_t*>(p + slot - 8))[0] = n ^ sizeKey(p)
    memClose(p + n, slot - n)           # pyarena_sanitize.h's protocol


cdef bint redzoneSizeOf(uintptr_t p, uintptr_t slot, size_t* n) noexcept nogil:
    """The object size the size word of the slot at p records, if the word
    is intact (it decodes to a size whose redzone fits the slot)."""
    cdef uintptr_t v
    memOpen(p + slot - 8, 8)            # in a redzone or a freed slot: closed
    v = (<uintptr_t*>(p + slot - 8))[0] ^ sizeKey(p)
    memClose(p + slot - 8, 8)
    if v == 0 or v >= slot or slot - v < redzoneSize(v):
        return False
    n[0] = v
    return True


cdef intptr_t redzoneDamage(uintptr_t p, uintptr_t slot, size_t* n) noexcept nogil:
    """Offset from p of the first damaged byte of the redzone of the live
    object at p, or -1 if it is intact; *n: the object's size (0 if the
    size word itself is damaged, which is then the damage reported)."""
    cdef const uint8_t* b = <const uint8_t*>p
    cdef uintptr_t i, end = slot - 8
    if not redzoneSizeOf(p, slot, n):
        n[0] = 0
        # Unknown end: the damage is at least the size word; report where
        # the canary run before it stops, the likeliest end of the write.
        # (The slot is left open: where the object ends is not known.)
        memOpen(p, slot)
        i = end
        while i > 0 and b[i - 1] == CANARY_BYTE:
            i -= 1
        return <intptr_t>end if i == end else <intptr_t>i
    memOpen(p + n[0], slot - n[0])
    for i in range(n[0], end):
        if b[i] != CANARY_BYTE:
            memClose(p + n[0], slot - n[0])
            return <intptr_t>i
    memClose(p + n[0], slot - n[0])
    return -1


cdef intptr_t freedDamage(uintptr_t p, uintptr_t slot) noexcept nogil:
    """Offset of the first byte of the freed slot at p that is not
    FREED_BYTE, or -1. A word at a time: slots are 16-aligned."""
    cdef const uint64_t* w = <const uint64_t*>p
    cdef const uint8_t* b
    cdef uintptr_t i, k
    memOpen(p, slot)
    for i in range(slot >> 3):
        if w[i] != 0xDDDDDDDDDDDDDDDDull:
            b = <const uint8_t*>&w[i]
            for k in range(8):
                if b[k] != FREED_BYTE:
                    memClose(p, slot)
                    return <intptr_t>(i * 8 + k)
    memClose(p, slot)
    return -1


cdef void poisonFreed(uintptr_t p, uintptr_t slot) noexcept nogil:
    """The freed pattern over the slot of the object at p, which is then
    closed to the sanitizers (a FREELIKE block for memcheck)."""
    memFreelike(p)
    memOpen(p, slot)
    memset(<void*>p, FREED_BYTE, slot)
    memClose(p, slot)


cdef void dbgRecord(mheap* h, int kind, uintptr_t addr, uintptr_t size, intptr_t offset,
                    uintptr_t other, void* bucket) noexcept nogil:
    """Keep a finding for the Python API (under h.dbgLock), and count
    damage in MemStats.corruptions (bad frees count in invalid_frees)."""
    cdef dbgFinding* f = &h.dbgFindings[h.dbgNFindings % DBG_FINDINGS]
    f.kind = kind
    f.addr = addr
    f.size = size
    f.offset = offset
    f.other = other
    f.bucket = bucket
    h.dbgNFindings += 1
    if kind == DBG_REDZONE or kind == DBG_FREED_WRITTEN:
        pa_add64(&h.corruptions, 1)


KIND_NAMES = {DBG_REDZONE: "redzone", DBG_FREED_WRITTEN: "freed-slot-written",
              DBG_BAD_FREE: "invalid-free", DBG_DOUBLE_FREE: "double-free"}


cdef str describe(mheap* h, int kind, uintptr_t addr, uintptr_t size, intptr_t offset,
                  uintptr_t other, void* bucket):
    if kind == DBG_REDZONE:
        if size:
            past = offset - <intptr_t>size
            where = "the first byte past its end" if past == 0 else f"{past} bytes past its end"
            text = (f"redzone damaged after the {size}-byte allocation at {addr:#x}: first "
                    f"damaged byte at offset {offset}, {where}")
        else:
            text = (f"redzone damaged after the allocation at {addr:#x}: its size word is "
                    f"overwritten; the write reached offset {offset} or beyond")
    elif kind == DBG_FREED_WRITTEN:
        text = (f"the freed {size}-byte slot at {addr:#x} was written after its free: "
                f"first changed byte at offset {offset}")
    elif kind == DBG_DOUBLE_FREE:
        text = (f"free of {addr:#x}, which is already free: the {size}-byte slot at "
                f"{other:#x} (freed twice?)")
    else:
        text = f"free of {addr:#x}, which is not an allocation's start"
        if other:
            text += f": it is inside the {size}-byte slot at {other:#x}"
    if kind == DBG_REDZONE:
        frames = bucketStack(bucket)
        if frames:
            text += "; allocated at (innermost first):" + "".join(
                f"\n  {fn} ({file}:{line})" for file, fn, line in frames)
        else:
            text += ("; its allocation stack is not known (the heap profile did not "
                     "sample it: Heap(debug=True) records every stack unless given "
                     "a profile_rate)")
    return "pyarena debug heap: " + text


cdef void dbgWarn(mheap* h, int kind, uintptr_t addr, uintptr_t size, intptr_t offset,
                  uintptr_t other, void* bucket) noexcept nogil:
    """Warn of a finding (any thread; the GIL is taken; no allocator lock
    may be held)."""
    with gil:
        try:
            warnings.warn(describe(h, kind, addr, size, offset, other, bucket),
                          HeapCorruptionWarning, stacklevel=2)
        except BaseException:
            # An error filter raising, or an interpreter shutting down: the
            # finding is still kept for check().
            pass


cdef object dbgTake(mheap* h):
    """The findings not yet handed to Python, as (kind, address, size,
    message) tuples, oldest first; marks them taken. GIL held. Copied under
    the lock, described after it (describing makes Python objects)."""
    cdef dbgFinding got[DBG_FINDINGS]
    cdef uint32_t first, last, i, n = 0
    pa_lock(&h.dbgLock)
    last = h.dbgNFindings
    first = h.dbgTaken
    if last - first > DBG_FINDINGS:
        first = last - DBG_FINDINGS
    i = first
    while i != last:
        got[n] = h.dbgFindings[i % DBG_FINDINGS]
        n += 1
        i += 1
    h.dbgTaken = last
    pa_unlock(&h.dbgLock)
    out = []
    for i in range(n):
        out.append((KIND_NAMES.get(got[i].kind, "debug"), got[i].addr, got[i].size,
                    describe(h, got[i].kind, got[i].addr, got[i].size, got[i].offset,
                             got[i].other, got[i].bucket)))
    return out


def redzone_size(nbytes):
    """The redzone a debug heap puts after an allocation of ``nbytes``
    bytes: Go's computeRZlog (16 B up to 48 B, 32 B up to 96 B, doubling at
    each boundary to 2048 B beyond 64512 B).

    Parameters
    ----------
    nbytes : int
        The allocation's size, >= 0.

    Returns
    -------
    int
    """
    cdef size_t n
    if isinstance(nbytes, bool) or not isinstance(nbytes, int):
        raise TypeError(f"nbytes must be an int, not {type(nbytes).__name__}")
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    n = nbytes if nbytes < <object>(<size_t>-1) else <size_t>-1
    return redzoneSize(n)
