"""Span slot bitmaps: allocBits, allocCache, nextFreeFast/nextFreeIndex,
freeBits and sweep, and the divide magic, driven through
pyarena._testing.SpanSim (one small span with no memory behind it).

Every step is followed by check_span(info()), the invariants listed in
_mspan.pxd.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant,
                                 precondition, rule)

from pyarena import PAGE_SIZE
from pyarena._testing import SpanSim, check_span

TSV = Path(__file__).resolve().parent / "data" / "go_sizeclasses.tsv"
with TSV.open(newline="") as _fh:
    ROWS = {int(r["class"]): r for r in csv.DictReader(_fh, delimiter="\t")}


def geometry(cls):
    """(elemsize, nelems, npages) of a class, from Go's published table."""
    r = ROWS[cls]
    return int(r["bytes_per_obj"]), int(r["objects"]), int(r["npages"])


def mask(n):
    return (1 << n) - 1


def bitset(indices):
    v = 0
    for i in indices:
        v |= 1 << i
    return v


def checked(sim):
    d = sim.info()
    check_span(d)
    return d


# ---------------------------------------------------------------------------
# A fresh span

@pytest.mark.parametrize("cls", [1, 2, 3, 5, 10, 35, 51, 67])
def test_fresh_span_geometry_matches_go_table(cls):
    elemsize, nelems, npages = geometry(cls)
    d = checked(SpanSim(cls))
    assert d["size_class"] == cls
    assert d["elemsize"] == elemsize
    assert d["nelems"] == nelems
    assert d["npages"] == npages
    assert d["state"] == "inuse"
    assert (d["freeindex"], d["alloc_count"], d["nfreed"], d["freshindex"]) == (0, 0, 0, 0)
    assert d["alloc_bits"] == 0 and d["free_bits"] == 0
    assert d["alloc_cache"] == 2**64 - 1, "an empty span's cache says every slot is free"
    assert d["needzero"] is False


@pytest.mark.parametrize("bad", [0, 68, -1, 1000])
def test_spansim_rejects_bad_class(bad):
    with pytest.raises((ValueError, OverflowError)):
        SpanSim(bad)


def test_info_reports_the_bit_of_every_slot():
    # The bitmaps in info() must cover all nelems slots, not only the low
    # (nelems % 32) of them. Class 1: 1024 slots; class 3: 341; class 10: 64.
    for cls, freed in ((1, [0, 100, 1023]), (3, [5, 40, 340]), (10, [1, 33, 63])):
        _, nelems, _ = geometry(cls)
        sim = SpanSim(cls)
        for _ in range(nelems):
            sim.alloc()
        for i in freed:
            sim.free(i)
        d = sim.info()
        assert d["free_bits"] == bitset(freed), (cls, bin(d["free_bits"]))
        sim.sweep()
        d = sim.info()
        assert d["alloc_bits"] == mask(nelems) & ~bitset(freed), (cls, bin(d["alloc_bits"]))


# ---------------------------------------------------------------------------
# Allocation order

@pytest.mark.parametrize("cls", [1, 2, 3, 5, 10, 18, 35, 51, 66, 67])
def test_alloc_hands_out_slots_in_order_then_none(cls):
    _, nelems, _ = geometry(cls)
    sim = SpanSim(cls)
    got = []
    for i in range(nelems):
        got.append(sim.alloc())
        d = checked(sim)
        assert d["alloc_count"] == i + 1
        assert d["freeindex"] == i + 1
    assert got == list(range(nelems))
    for _ in range(3):
        assert sim.alloc() is None
        assert sim.alloc_fast() is None
        d = checked(sim)
        assert d["alloc_count"] == nelems
        assert d["freeindex"] == nelems
    # Never-swept span: allocBits stays empty; freeindex alone says "taken".
    assert d["alloc_bits"] == 0
    assert d["free_bits"] == 0


def test_fast_path_refuses_at_64_slot_boundaries_and_slow_path_crosses():
    # Class 1: 1024 slots, 16 words of bitmap.
    sim = SpanSim(1)
    for word in range(16):
        base = 64 * word
        for k in range(63):
            assert sim.alloc_fast() == base + k
            checked(sim)
        if word == 15:
            # freeindex 1024 == nelems: the last slot is the fast path's.
            assert sim.alloc_fast() == 1023
            d = checked(sim)
            assert d["freeindex"] == 1024 and d["alloc_count"] == 1024
            break
        # Taking slot base+63 would make freeindex a multiple of 64 (but not
        # nelems): nextFreeFast must refuse, and keep refusing.
        d_before = sim.info()
        assert sim.alloc_fast() is None
        assert sim.alloc_fast() is None
        d_after = checked(sim)
        assert d_after == d_before, "a refused fast path must not change the span"
        assert d_after["freeindex"] == base + 63
        # The slow path takes the slot and refills the cache for the next word.
        assert sim.alloc() == base + 63
        d = checked(sim)
        assert d["freeindex"] == base + 64
        assert d["alloc_count"] == base + 64
        assert d["alloc_cache"] == 2**64 - 1
    assert sim.alloc_fast() is None
    assert sim.alloc() is None


def test_fast_path_reaches_the_end_when_nelems_is_64():
    # Class 10 (128 B) has exactly 64 slots: freeindex 64 == nelems is not
    # a boundary the fast path must stop at.
    _, nelems, _ = geometry(10)
    assert nelems == 64
    sim = SpanSim(10)
    assert [sim.alloc_fast() for _ in range(64)] == list(range(64))
    d = checked(sim)
    assert d["freeindex"] == 64 and d["alloc_count"] == 64
    assert sim.alloc_fast() is None
    assert sim.alloc() is None


@pytest.mark.parametrize("cls", [3, 5, 7])
def test_fast_path_stops_at_nelems_in_a_partial_last_word(cls):
    _, nelems, _ = geometry(cls)
    sim = SpanSim(cls)
    got = []
    while True:
        v = sim.alloc_fast()
        if v is None:
            v = sim.alloc()
            if v is None:
                break
        got.append(v)
        checked(sim)
    assert got == list(range(nelems))
    d = checked(sim)
    assert d["freeindex"] == nelems and d["alloc_count"] == nelems


def test_fast_and_slow_paths_alternate_across_words_of_class_5():
    # Class 5 (48 B): 170 slots = 2 full words + 42.
    _, nelems, _ = geometry(5)
    sim = SpanSim(5)
    fast = []
    while (v := sim.alloc_fast()) is not None:
        fast.append(v)
    assert fast == list(range(63))
    assert sim.alloc() == 63
    fast = []
    while (v := sim.alloc_fast()) is not None:
        fast.append(v)
    assert fast == list(range(64, 127))
    assert sim.alloc() == 127
    fast = []
    while (v := sim.alloc_fast()) is not None:
        fast.append(v)
    assert fast == list(range(128, nelems))
    checked(sim)


# ---------------------------------------------------------------------------
# Free and sweep

def test_freed_slots_are_not_reused_before_sweep():
    _, nelems, _ = geometry(5)
    sim = SpanSim(5)
    for i in range(nelems):
        assert sim.alloc() == i
    for i in (0, 1, 63, 64, 169):
        sim.free(i)
        checked(sim)
    d = checked(sim)
    assert d["nfreed"] == 5
    assert d["alloc_count"] == nelems, "freed-but-unswept slots still count"
    assert d["free_bits"] == bitset([0, 1, 63, 64, 169])
    for _ in range(3):
        assert sim.alloc() is None
        assert sim.alloc_fast() is None
    assert checked(sim)["nfreed"] == 5


def test_free_then_alloc_without_sweep_continues_past_freeindex():
    sim = SpanSim(1)
    for i in range(10):
        assert sim.alloc() == i
    sim.free(2)
    sim.free(5)
    checked(sim)
    # Not reused: allocation continues at freeindex.
    assert [sim.alloc() for _ in range(3)] == [10, 11, 12]
    d = checked(sim)
    assert d["alloc_count"] == 13 and d["nfreed"] == 2 and d["freeindex"] == 13


def test_sweep_makes_exactly_the_freed_slots_reusable_lowest_first():
    _, nelems, _ = geometry(1)
    sim = SpanSim(1)
    for i in range(300):
        assert sim.alloc() == i
    freed = [200, 3, 64, 10, 127, 128]
    for i in freed:
        sim.free(i)
        checked(sim)
    d = checked(sim)
    assert d["freeindex"] == 300 and d["alloc_count"] == 300 and d["nfreed"] == 6
    sim.sweep()
    d = checked(sim)
    assert d["freeindex"] == 0
    assert d["nfreed"] == 0
    assert d["free_bits"] == 0
    assert d["alloc_count"] == 300 - len(freed)
    assert d["freshindex"] == 300
    assert d["alloc_bits"] == mask(300) & ~bitset(freed)
    assert d["alloc_cache"] == (~d["alloc_bits"]) & (2**64 - 1)
    # Reuse: the freed slots, lowest first, then on from the old freeindex.
    again = [sim.alloc() for _ in range(len(freed))]
    assert again == sorted(freed)
    checked(sim)
    assert [sim.alloc() for _ in range(3)] == [300, 301, 302]
    d = checked(sim)
    assert d["alloc_count"] == 303
    assert d["freshindex"] == 300


def test_sweep_without_frees_changes_nothing():
    sim = SpanSim(3)
    for _ in range(70):
        sim.alloc()
    before = sim.info()
    sim.sweep()
    assert checked(sim) == before


def test_sweep_of_full_span_then_refill_to_full_again():
    _, nelems, _ = geometry(3)
    sim = SpanSim(3)
    for i in range(nelems):
        sim.alloc()
    freed = list(range(0, nelems, 7))
    for i in freed:
        sim.free(i)
    sim.sweep()
    d = checked(sim)
    assert d["alloc_count"] == nelems - len(freed)
    assert d["freshindex"] == nelems
    got = []
    while (v := sim.alloc()) is not None:
        got.append(v)
        checked(sim)
    assert got == freed
    d = checked(sim)
    assert d["alloc_count"] == nelems and d["freeindex"] == nelems


def test_free_everything_then_sweep_gives_an_empty_span():
    _, nelems, _ = geometry(10)
    sim = SpanSim(10)
    for _ in range(nelems):
        sim.alloc()
    for i in range(nelems):
        sim.free(i)
    sim.sweep()
    d = checked(sim)
    assert d["alloc_count"] == 0 and d["alloc_bits"] == 0 and d["freshindex"] == nelems
    assert [sim.alloc() for _ in range(nelems)] == list(range(nelems))
    assert sim.alloc() is None


def test_second_sweep_keeps_freshindex_high_water_mark():
    sim = SpanSim(1)
    for _ in range(100):
        sim.alloc()
    sim.free(50)
    sim.sweep()
    assert checked(sim)["freshindex"] == 100
    assert sim.alloc() == 50
    sim.free(7)
    sim.sweep()                      # freeindex was 51 < freshindex
    d = checked(sim)
    assert d["freshindex"] == 100
    assert d["alloc_bits"] == mask(100) & ~(1 << 7)
    assert sim.alloc() == 7
    assert sim.alloc() == 100


def test_free_rejects_unallocated_and_double_free():
    sim = SpanSim(2)
    sim.alloc()
    with pytest.raises(ValueError):
        sim.free(1)                  # never allocated
    with pytest.raises(ValueError):
        sim.free(512)                # past nelems
    sim.free(0)
    with pytest.raises(ValueError):
        sim.free(0)                  # freed, not swept
    sim.sweep()
    with pytest.raises(ValueError):
        sim.free(0)                  # free after sweep
    d = checked(sim)
    assert d["alloc_count"] == 0 and d["nfreed"] == 0


# ---------------------------------------------------------------------------
# The divide magic

@pytest.mark.parametrize("cls", [1, 3, 5, 35, 67])
def test_index_of_every_byte_offset_equals_division(cls):
    elemsize, nelems, npages = geometry(cls)
    sim = SpanSim(cls)
    span_bytes = npages * PAGE_SIZE
    bad = [(off, sim.index_of(off)) for off in range(span_bytes)
           if sim.index_of(off) != off // elemsize]
    assert bad == []


@pytest.mark.parametrize("cls", range(1, 68))
def test_index_of_slot_boundaries_every_class(cls):
    elemsize, nelems, npages = geometry(cls)
    sim = SpanSim(cls)
    for i in range(nelems):
        start = i * elemsize
        for off in (start, start + 1, start + elemsize // 2, start + elemsize - 1):
            assert sim.index_of(off) == i, (cls, off)
    last = npages * PAGE_SIZE - 1
    assert sim.index_of(last) == last // elemsize


# ---------------------------------------------------------------------------
# Model-based: alloc/free/sweep against a Python set model

class SpanModel(RuleBasedStateMachine):
    """allocatable: free as of the last sweep; live: allocated, alive;
    pending: freed, not yet swept."""

    @initialize(cls=st.integers(1, 67))
    def setup(self, cls):
        self.cls = cls
        self.elemsize, self.nelems, _ = geometry(cls)
        self.sim = SpanSim(cls)
        self.allocatable = set(range(self.nelems))
        self.live = set()
        self.pending = set()
        self.freeindex = 0
        self.freshindex = 0

    @rule(fast=st.booleans())
    def alloc(self, fast):
        got = self.sim.alloc_fast() if fast else self.sim.alloc()
        want = min(self.allocatable) if self.allocatable else None
        if fast and got is None and want is not None:
            # Only allowed at a 64-slot boundary that is not the end.
            assert (want + 1) % 64 == 0 and want + 1 != self.nelems
            return
        assert got == want
        if want is None:
            if not fast:
                # The slow path records the span as full; the fast path
                # just says no.
                self.freeindex = self.nelems
        else:
            self.allocatable.remove(want)
            self.live.add(want)
            self.freeindex = want + 1

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data):
        i = data.draw(st.sampled_from(sorted(self.live)))
        self.sim.free(i)
        self.live.remove(i)
        self.pending.add(i)

    @rule()
    def sweep(self):
        self.sim.sweep()
        if self.pending:
            self.freshindex = max(self.freshindex, self.freeindex)
            self.freeindex = 0
            self.allocatable |= self.pending
            self.pending = set()

    @rule(data=st.data())
    def free_bad(self, data):
        i = data.draw(st.integers(0, self.nelems - 1))
        if i in self.live:
            return
        with pytest.raises(ValueError):
            self.sim.free(i)

    @invariant()
    def matches_model(self):
        if not hasattr(self, "sim"):
            return
        d = self.sim.info()
        check_span(d)
        assert d["alloc_count"] == len(self.live) + len(self.pending)
        assert d["nfreed"] == len(self.pending)
        assert d["free_bits"] == bitset(self.pending)
        assert d["freeindex"] == self.freeindex
        assert d["freshindex"] == self.freshindex
        allocated = d["alloc_bits"] | mask(d["freeindex"])
        assert allocated & mask(self.nelems) == bitset(self.live | self.pending)


SpanModel.TestCase.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow])
TestSpanModel = SpanModel.TestCase


@settings(max_examples=100, deadline=None, database=None)
@given(cls=st.sampled_from([1, 2, 3, 5, 10]),
       ops=st.lists(st.tuples(st.sampled_from("aafs"), st.integers(0, 2**16)),
                    max_size=400))
def test_alloc_free_sweep_sequences_match_set_model(cls, ops):
    _, nelems, _ = geometry(cls)
    sim = SpanSim(cls)
    allocatable = set(range(nelems))
    live, pending = [], set()
    for op, arg in ops:
        if op == "a":
            got = sim.alloc()
            want = min(allocatable) if allocatable else None
            assert got == want
            if want is not None:
                allocatable.remove(want)
                live.append(want)
        elif op == "f" and live:
            i = live.pop(arg % len(live))
            sim.free(i)
            pending.add(i)
        elif op == "s":
            sim.sweep()
            allocatable |= pending
            pending = set()
        d = sim.info()
        check_span(d)
        assert d["alloc_count"] == len(live) + len(pending)
        assert d["free_bits"] == bitset(pending)
