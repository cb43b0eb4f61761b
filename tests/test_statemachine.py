"""Stateful property test: alloc / free / write / release against a model.

A hypothesis RuleBasedStateMachine drives one fresh ``pyarena.Heap`` per run
and keeps, for every live Block, the bytes it must hold. After every step it
checks what the allocator promises:

- live blocks never overlap (zero-size blocks excluded) and hold exactly the
  bytes written into them;
- a block allocated with ``zero=True`` reads as zero;
- alignment: 16 for ``nbytes >= 16``, ``align`` when asked for;
- ``heap.owns`` says True for every byte of a live slot, and False for the
  address of a freed block that no live slot covers;
- the MemStats identities (heap_sys == inuse + idle, released <= idle,
  heap_objects == mallocs - frees == live blocks with nbytes > 0, by_size
  adding up, heap_alloc == live slot bytes), and the per-class live counts;
- ``_testing.check_heap`` (page-heap and span invariants).
"""

from __future__ import annotations

import bisect
import random
from collections import Counter

import pytest

import hypothesis  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import (  # noqa: E402
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import pyarena  # noqa: E402
from pyarena import _testing  # noqa: E402

PAGE_SIZE = pyarena.PAGE_SIZE
MAX_SMALL = pyarena.MAX_SMALL_SIZE
TINY_CLASS = 2
CLASSES = {row.size_class: row for row in pyarena.size_classes()}
ALIGNS = [1 << k for k in range(14)]  # 1 .. 8192


@st.composite
def sizes(draw):
    """0, tiny 1..15, small 16..1024, 1025..32768, and rarely large."""
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return 0
    if kind <= 5:
        return draw(st.integers(1, 15))
    if kind <= 12:
        return draw(st.integers(16, 1024))
    if kind <= 18:
        return draw(st.integers(1025, MAX_SMALL))
    return draw(st.integers(MAX_SMALL + 1, 300_000))


aligns = st.one_of(st.none(), st.none(), st.sampled_from(ALIGNS))


def pattern(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


OTHER_HEAP = pyarena.Heap()
OTHER_HEAP.alloc(64)  # give it an arena of its own


class Live:
    """A live block and the bytes the model says it holds."""

    __slots__ = ("block", "data", "align", "tiny")

    def __init__(self, block, data, align, tiny):
        self.block = block
        self.data = data
        self.align = align
        self.tiny = tiny


class HeapMachine(RuleBasedStateMachine):
    DEBUG = False       # DebugHeapMachine: the same sequences on a debug heap

    def __init__(self):
        super().__init__()
        self.heap = pyarena.Heap(debug=self.DEBUG)
        self.other = OTHER_HEAP      # owns none of this heap's memory
        self.live: list[Live] = []
        self.freed: list[tuple[int, int]] = []  # (address, nbytes), recent
        self.zerobase = None
        self.last = self.heap.stats()

    # -- rules -------------------------------------------------------------

    @initialize()
    def start(self):
        st0 = self.heap.stats()
        assert st0.heap_objects == 0 and st0.mallocs == 0 and st0.frees == 0
        _testing.check_heap(self.heap)

    def _add(self, nbytes, align, zero):
        b = self.heap.alloc(nbytes, zero=zero, align=align)
        assert b.nbytes == nbytes == len(b)
        assert b.heap is self.heap
        assert self.heap.owns(b)
        mv = memoryview(b)
        assert mv.nbytes == nbytes and not mv.readonly
        data = bytearray(mv)
        if zero:
            assert data.count(0) == nbytes, "zero=True block is not zeroed"
        tiny = nbytes > 0 and nbytes < 16 and align is None and not self.DEBUG
        if self.DEBUG and nbytes:
            # A slot with room for the redzone; uninitialised memory shows
            # the fresh pattern; no tiny values.
            assert b.slot_size >= nbytes + pyarena.redzone_size(nbytes)
            if not zero:
                assert data == b"\xcd" * nbytes, "a debug heap's fresh memory is 0xCD"
            if align is not None:
                assert b.address % align == 0
            self.live.append(Live(b, data, align, False))
            return b
        if nbytes == 0:
            assert b.slot_size == 0 and b.size_class == 0
            if self.zerobase is None:
                self.zerobase = b.address
            assert b.address == self.zerobase, "zero-size blocks must share zerobase"
        else:
            a = b.address
            assert a % 16 == 0 or nbytes < 16, (nbytes, hex(a))
            if align is not None:
                assert a % align == 0, (nbytes, align, hex(a))
            assert b.slot_size >= nbytes
            if tiny:
                assert b.size_class == TINY_CLASS and b.slot_size == 16
                # a tiny value lies inside one 16-byte block
                assert (a & ~15) == ((a + nbytes - 1) & ~15), hex(a)
            elif nbytes > MAX_SMALL:
                assert b.size_class == 0
                assert b.slot_size == -(-nbytes // PAGE_SIZE) * PAGE_SIZE
                assert a % PAGE_SIZE == 0
            else:
                row = CLASSES.get(b.size_class)
                if row is None:  # a small request served as a large object
                    assert b.size_class == 0 and a % PAGE_SIZE == 0
                else:
                    assert b.slot_size == row.bytes_per_obj
                    if align is not None:
                        assert row.min_align >= align
                    sp = _testing.span_of(self.heap, a)
                    assert sp is not None and sp["size_class"] == b.size_class
                    assert (a - sp["start"]) % sp["elemsize"] == 0, "not a slot start"
        self.live.append(Live(b, data, align, tiny))
        return b

    @rule(nbytes=sizes(), align=aligns, zero=st.booleans())
    def alloc(self, nbytes, align, zero):
        self._add(nbytes, align, zero)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data):
        i = data.draw(st.integers(0, len(self.live) - 1), label="index")
        e = self.live.pop(i)
        addr, n = e.block.address, e.block.nbytes
        del e
        if n:
            self.freed.append((addr, n))
            del self.freed[:-32]

    @precondition(lambda self: any(e.block.nbytes for e in self.live))
    @rule(data=st.data(), seed=st.integers(0, 2**32 - 1), whole=st.booleans())
    def write(self, data, seed, whole):
        cands = [e for e in self.live if e.block.nbytes]
        # Draw an index, not the object: hypothesis keeps drawn values (for
        # its report), which would keep the block alive.
        e = cands[data.draw(st.integers(0, len(cands) - 1), label="block")]
        n = e.block.nbytes
        if whole:
            off, length = 0, n
        else:
            off = data.draw(st.integers(0, n - 1), label="offset")
            length = data.draw(st.integers(1, min(n - off, 4096)), label="length")
        pat = pattern(seed, length)
        memoryview(e.block)[off:off + length] = pat
        e.data[off:off + length] = pat

    @rule()
    def release(self):
        before = self.heap.stats()
        got = self.heap.release()
        after = self.heap.stats()
        assert got >= 0 and got % PAGE_SIZE == 0
        assert after.heap_released - before.heap_released == got
        assert after.heap_released == after.heap_idle, "release() left free pages"
        assert after.heap_sys == before.heap_sys

    @rule(size=st.sampled_from([16, 17, 48, 100, 512, 1024, 3000, 9000, 20000]),
          extra=st.integers(1, 24), zero=st.booleans(), keep=st.integers(0, 3))
    def churn_class(self, size, extra, zero, keep):
        """Fill more than a span of one class with dirty bytes, free it all,
        allocate again: swept slots are reused and must be cleared."""
        cls = pyarena.size_class(size)[0]
        n = CLASSES[cls].objects + extra if cls else extra
        dirty = [self.heap.alloc(size, zero=False) for _ in range(n)]
        for b in dirty:
            memoryview(b)[:] = b"\xa5" * size
        del dirty, b
        again = [self.heap.alloc(size, zero=zero) for _ in range(n)]
        if zero:
            for b in again:
                assert bytes(b).count(0) == size, \
                    f"reused {size}-byte slot at {b.address:#x} not zeroed"
        for b in again[:keep]:
            self.live.append(Live(b, bytearray(memoryview(b)), None, False))

    # -- invariants --------------------------------------------------------

    def _slot_ranges(self):
        """Sorted [start, end) of every live slot: a live block's slot, a
        live tiny value's 16-byte block, and this thread's current tiny
        block."""
        r = set()
        for e in self.live:
            b = e.block
            if b.nbytes == 0:
                continue
            if e.tiny:
                r.add((b.address & ~15, (b.address & ~15) + 16))
            else:
                r.add((b.address, b.address + b.slot_size))
        _, tiny = _testing.cached_spans(self.heap)
        if tiny is not None:
            r.add((tiny[0], tiny[0] + 16))
        return sorted(r)

    @invariant()
    def model_holds(self):
        h = self.heap
        blocks = [e for e in self.live if e.block.nbytes]
        # No two live byte ranges overlap.
        spans = sorted((e.block.address, e.block.address + e.block.nbytes) for e in blocks)
        for (a0, e0), (a1, e1) in zip(spans, spans[1:]):
            assert e0 <= a1, f"live blocks overlap: [{a0:#x},{e0:#x}) [{a1:#x},{e1:#x})"
        # Contents as written.
        for e in self.live:
            assert bytes(memoryview(e.block)) == e.data, \
                f"contents of {e.block!r} changed"
        # Ownership of live bytes.
        for e in blocks:
            b = e.block
            assert h.owns(b)
            assert h.owns(b.address), f"owns() False for live {b!r}"
            assert h.owns(b.address + b.nbytes - 1)
            mv = memoryview(b)
            assert h.owns(mv) and h.owns(mv[:0]) and h.owns(mv[::-1])
            assert h.owns(mv[b.nbytes // 2:])
            assert not self.other.owns(b.address) and not self.other.owns(mv)
            if not e.tiny:
                assert h.owns(b.address + b.slot_size - 1)
        # A freed address is owned only if some live slot covers it.
        ranges = self._slot_ranges()
        starts = [s for s, _ in ranges]
        for addr, _n in self.freed:
            i = bisect.bisect_right(starts, addr) - 1
            covered = i >= 0 and ranges[i][0] <= addr < ranges[i][1]
            assert h.owns(addr) == covered, \
                f"owns({addr:#x}) after free: expected {covered}"
        # Statistics.
        s = h.stats()
        assert s.heap_sys == s.heap_inuse + s.heap_idle
        assert 0 <= s.heap_released <= s.heap_idle
        assert s.heap_objects == s.mallocs - s.frees
        assert s.heap_objects == len(blocks), (s.heap_objects, len(blocks))
        assert len(s.by_size) == 68
        assert sum(c.mallocs for c in s.by_size) == s.mallocs
        assert sum(c.frees for c in s.by_size) == s.frees
        per_class = Counter(e.block.size_class for e in blocks)
        got = {i: c.mallocs - c.frees for i, c in enumerate(s.by_size) if c.mallocs != c.frees}
        assert got == dict(per_class), (got, dict(per_class))
        slot_bytes = sum(e - a for a, e in ranges)
        assert s.heap_alloc == slot_bytes, (s.heap_alloc, slot_bytes)
        assert s.heap_alloc <= s.heap_inuse
        assert s.total_alloc >= s.heap_alloc
        assert s.heap_sys % PAGE_SIZE == 0 and s.heap_inuse % PAGE_SIZE == 0
        # Cumulative counters never go back.
        last = self.last
        assert s.mallocs >= last.mallocs and s.frees >= last.frees
        assert s.total_alloc >= last.total_alloc and s.sweeps >= last.sweeps
        self.last = s

    @invariant()
    def heap_checks(self):
        _testing.check_heap(self.heap)
        assert self.heap.check() == len([e for e in self.live if e.block.nbytes]) or not self.DEBUG

    def teardown(self):
        self.live.clear()
        s = self.heap.stats()
        assert s.heap_objects == 0
        assert s.mallocs == s.frees
        _testing.check_heap(self.heap)
        self.heap.close()


HeapMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TestHeapMachine = HeapMachine.TestCase


class DebugHeapMachine(HeapMachine):
    """HeapMachine on a debug heap: every step's check() also walks every
    redzone and freed slot, and must find nothing."""
    DEBUG = True


DebugHeapMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TestDebugHeapMachine = DebugHeapMachine.TestCase
