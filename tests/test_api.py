"""The public API: Heap.alloc and Block, zeroing, alignment, errors, the
tiny allocator, lifetimes through views, owns(), statistics, close(), the
default heap and the size-class functions."""

from __future__ import annotations

import csv
import ctypes
import gc
import threading
from pathlib import Path

import numpy as np
import pytest

import pyarena
from pyarena import MAX_SMALL_SIZE, NUM_SIZE_CLASSES, PAGE_SIZE, Block, Heap
from pyarena._testing import cached_spans, check_heap, num_caches, span_of

TSV = Path(__file__).resolve().parent / "data" / "go_sizeclasses.tsv"
with TSV.open(newline="") as _fh:
    GO = [{k: v for k, v in r.items()} for r in csv.DictReader(_fh, delimiter="\t")]
CLASS_SIZE = [0] + [int(r["bytes_per_obj"]) for r in GO]
CLASS_ALIGN = [0] + [int(r["min_align"]) for r in GO]
CLASS_NELEMS = [0] + [int(r["objects"]) for r in GO]

KiB = 1024
MiB = 1024 * KiB


def lowbit(n):
    return n & -n


def go_class(n):
    """Smallest class holding n bytes (Go's size_to_class lookup)."""
    for c in range(1, NUM_SIZE_CLASSES):
        if CLASS_SIZE[c] >= n:
            return c
    return 0


def alloc_class(n, align=0):
    """The class Heap.alloc must use for n >= 16 (or with an explicit
    align): the smallest class holding n whose slots are aligned to
    max(align, 16 if n >= 16 else 0); 0 (large) when none is."""
    want = max(align, 16 if n >= 16 else 0)
    c = go_class(n)
    if c == 0:
        return 0
    while c < NUM_SIZE_CLASSES and CLASS_ALIGN[c] < want:
        c += 1
    return 0 if c == NUM_SIZE_CLASSES else c


def tiny_align(n):
    if n % 8 == 0:
        return 8
    if n % 4 == 0:
        return 4
    if n % 2 == 0:
        return 2
    return 1


def read(block):
    return bytes(memoryview(block))


def fill(block, byte):
    memoryview(block)[:] = bytes([byte]) * block.nbytes


# ---------------------------------------------------------------------------
# Zeroing

@pytest.mark.parametrize("n", [1, 5, 8, 15, 16, 24, 100, 1000, 1024, 5000, 32768, 40000,
                               300 * KiB])
def test_fresh_allocations_read_zero(heap, n):
    blocks = [heap.alloc(n) for _ in range(4)]
    for b in blocks:
        assert b.nbytes == n and len(b) == n
        assert read(b) == bytes(n)


@pytest.mark.parametrize("n", [3, 8, 16, 24, 100, 1000, 3000, 9000, 32768, 40000,
                               300 * KiB + 1])
def test_reused_memory_reads_zero(heap, n):
    if n >= 16:
        rounds = 3 * CLASS_NELEMS[alloc_class(n)] + 5 if n <= MAX_SMALL_SIZE else 10
    else:
        rounds = 3 * CLASS_NELEMS[2] * (16 // n) + 5    # values per tiny block
    seen = {}
    reused = 0
    for i in range(rounds):
        b = heap.alloc(n)
        assert read(b) == bytes(n), (i, hex(b.address))
        fill(b, 0xFF)
        if b.address in seen:
            reused += 1
        seen[b.address] = i
        del b
    assert reused > 0, "memory was never reused: the test proves nothing"
    check_heap(heap)


def test_reused_memory_reads_zero_after_zero_false_garbage(heap):
    # Dirty slots with zero=False allocations, then ask for zeroes.
    for _ in range(3):
        dirty = [heap.alloc(48, zero=False) for _ in range(400)]
        for d in dirty:
            fill(d, 0xAB)
        addrs = {d.address for d in dirty}
        del dirty, d
        clean = [heap.alloc(48) for _ in range(400)]
        assert addrs & {c.address for c in clean}
        for c in clean:
            assert read(c) == bytes(48)
        del clean, c
    check_heap(heap)


def test_zero_false_gives_writable_memory_of_the_right_size(heap):
    for n in (1, 16, 100, 5000, 40000, 1 * MiB):
        b = heap.alloc(n, zero=False)
        assert b.nbytes == n
        pattern = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
        memoryview(b)[:] = pattern
        assert read(b) == pattern


def test_zero_false_may_return_old_contents_but_not_overlap_live(heap):
    live = [heap.alloc(64) for _ in range(200)]
    for i, b in enumerate(live):
        memoryview(b)[:] = bytes([i % 251]) * 64
    more = [heap.alloc(64, zero=False) for _ in range(200)]
    assert not {b.address for b in live} & {b.address for b in more}
    for i, b in enumerate(live):
        assert read(b) == bytes([i % 251]) * 64


# ---------------------------------------------------------------------------
# Alignment

def test_natural_alignment_all_sizes_up_to_1100(heap):
    keep = []
    for n in range(1, 1101):
        b = heap.alloc(n)
        keep.append(b)
        if n < 16:
            assert b.size_class == 2 and b.slot_size == 16
            assert b.address % tiny_align(n) == 0, (n, hex(b.address))
        else:
            cls = alloc_class(n)
            assert b.size_class == cls, n
            assert b.slot_size == CLASS_SIZE[cls], n
            assert b.address % 16 == 0, n
            assert b.address % CLASS_ALIGN[cls] == 0, n
            assert b.address % min(lowbit(b.slot_size), PAGE_SIZE) == 0, n
    check_heap(heap)


def test_natural_alignment_sample_up_to_40000(heap):
    sizes = sorted(set(list(range(1100, 40001, 97)) + [2048, 4096, 8191, 8192, 8193, 16384,
                                                       24576, 32767, 32768, 32769, 40000]))
    keep = []
    for n in sizes:
        b = heap.alloc(n)
        keep.append(b)
        if n <= MAX_SMALL_SIZE:
            cls = alloc_class(n)
            assert b.size_class == cls and b.slot_size == CLASS_SIZE[cls], n
            assert b.address % max(16, CLASS_ALIGN[cls]) == 0, n
        else:
            assert b.size_class == 0
            assert b.slot_size == -(-n // PAGE_SIZE) * PAGE_SIZE
            assert b.address % PAGE_SIZE == 0, n
    check_heap(heap)


def test_sizes_17_to_24_skip_the_8_aligned_class(heap):
    for n in range(17, 25):
        b = heap.alloc(n)
        assert b.size_class == 4 and b.slot_size == 32
        assert b.address % 32 == 0
        assert pyarena.size_class(n) == (3, 24)


ALIGNS = [1 << k for k in range(14)]


@pytest.mark.parametrize("align", ALIGNS)
def test_align_parameter(heap, align):
    keep = []
    for n in (1, 7, 8, 15, 16, 24, 100, 1000, 4097, 20000, 32768, 40000):
        for _ in range(3):
            b = heap.alloc(n, align=align)
            keep.append(b)
            assert b.address % align == 0, (n, align, hex(b.address))
            assert b.nbytes == n
            assert b.slot_size >= n
            if n >= 16:
                assert b.address % 16 == 0
            cls = alloc_class(n, align) if n <= MAX_SMALL_SIZE else 0
            assert b.size_class == cls, (n, align)
            if cls:
                assert b.slot_size == CLASS_SIZE[cls]
                assert b.address % CLASS_ALIGN[cls] == 0
            else:
                assert b.address % PAGE_SIZE == 0
                assert b.slot_size == -(-n // PAGE_SIZE) * PAGE_SIZE
            assert read(b) == bytes(n)
            memoryview(b)[-1] = 0x11
    check_heap(heap)


def test_align_parameter_never_uses_tiny_blocks(heap):
    bs = [heap.alloc(3, align=1) for _ in range(4)]
    assert len({b.address for b in bs}) == 4
    for b in bs:
        assert b.size_class == 1 and b.slot_size == 8
    assert cached_spans(heap)[1] is None


# ---------------------------------------------------------------------------
# Errors leave the heap usable

def assert_usable(h):
    check_heap(h)
    b = h.alloc(100)
    memoryview(b)[:] = b"x" * 100
    assert read(b) == b"x" * 100
    big = h.alloc(50000)
    assert read(big) == bytes(50000)


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (3, ValueError), (16384, ValueError),
                                     (-8, ValueError), ("x", TypeError), (2.0, TypeError),
                                     (24, ValueError), (2**64, ValueError), (None, None)])
def test_bad_align(heap, bad, exc):
    if exc is None:
        assert heap.alloc(10, align=bad).nbytes == 10      # None means "no align"
    else:
        with pytest.raises(exc):
            heap.alloc(10, align=bad)
        with pytest.raises(exc):
            heap.alloc(100000, align=bad)
        with pytest.raises(exc):
            pyarena.alloc(10, align=bad)
    assert_usable(heap)


def test_negative_size(heap):
    for n in (-1, -16, -(2**40)):
        with pytest.raises(ValueError, match="negative"):
            heap.alloc(n)
    assert_usable(heap)


@pytest.mark.parametrize("n", [2.0, 16.5, "16", None, b"1"])
def test_non_integer_size(heap, n):
    with pytest.raises(TypeError):
        heap.alloc(n)
    assert_usable(heap)


def test_size_too_large_for_c(heap):
    for n in (2**70, 2**64, 2**63):
        with pytest.raises(OverflowError):
            heap.alloc(n)
    assert_usable(heap)


def test_size_out_of_range_is_memory_error_with_message(heap):
    before = heap.stats()
    for n in (2**62, 2**63 - 1, 2**48 + 1):
        with pytest.raises(MemoryError) as ei:
            heap.alloc(n)
        msg = str(ei.value)
        assert str(n) in msg and "bytes" in msg, msg
    after = heap.stats()
    assert after.mallocs == before.mallocs and after.heap_sys == before.heap_sys
    assert_usable(heap)


def test_errors_keep_live_blocks_intact(heap):
    b = heap.alloc(300)
    memoryview(b)[:] = b"q" * 300
    for call in (lambda: heap.alloc(-1), lambda: heap.alloc(2**62),
                 lambda: heap.alloc(5, align=3), lambda: heap.alloc(2**70)):
        with pytest.raises((ValueError, MemoryError, OverflowError)):
            call()
    assert read(b) == b"q" * 300
    assert_usable(heap)


# ---------------------------------------------------------------------------
# Zero-size and tiny allocations

def test_zero_size_blocks_share_one_address(heap):
    zs = [heap.alloc(0) for _ in range(5)] + [pyarena.alloc(0), Heap().alloc(0),
                                            heap.alloc(0, align=4096)]
    assert len({z.address for z in zs}) == 1
    z = zs[0]
    assert z.address != 0
    assert len(z) == 0 and z.nbytes == 0 and z.slot_size == 0 and z.size_class == 0
    m = memoryview(z)
    assert m.nbytes == 0 and not m.readonly
    assert bytes(z) == b""
    assert np.frombuffer(z, dtype=np.uint8).size == 0
    # Zero-size allocations are not counted (Go: mallocgc returns early).
    before = heap.stats()
    more = [heap.alloc(0) for _ in range(10)]
    after = heap.stats()
    assert after.mallocs == before.mallocs and after.heap_alloc == before.heap_alloc
    assert not heap.owns(z.address)
    del more
    check_heap(heap)


def test_tiny_allocations_share_a_16_byte_block(heap):
    a, b, c, d = heap.alloc(1), heap.alloc(2), heap.alloc(4), heap.alloc(8)
    base = a.address
    assert base % 16 == 0
    assert [x.address - base for x in (a, b, c, d)] == [0, 2, 4, 8]
    for x in (a, b, c, d):
        assert x.size_class == 2 and x.slot_size == 16
    assert cached_spans(heap)[1] == (base, 16)
    assert heap.stats().heap_alloc == 16
    memoryview(a)[:] = b"\x01"
    memoryview(b)[:] = b"\x02\x02"
    memoryview(c)[:] = b"\x03" * 4
    memoryview(d)[:] = b"\x04" * 8
    assert ctypes.string_at(base, 16) == b"\x01\x00\x02\x02" + b"\x03" * 4 + b"\x04" * 8


@pytest.mark.parametrize("sizes", [[1, 8], [3, 4], [1, 2, 1, 4], [5, 2, 6], [7, 7],
                                   [1, 1, 1, 12], [2, 3, 8], [15], [9, 6], [12, 4]])
def test_tiny_offsets_follow_go_alignment_rule(heap, sizes):
    got = [heap.alloc(n) for n in sizes]
    base = got[0].address
    off = 0
    for n, g in zip(sizes, got):
        o = -(-off // tiny_align(n)) * tiny_align(n)
        if o + n > 16:
            break                      # a new block: the model ends here
        assert g.address - base == o, (sizes, n)
        assert g.address % tiny_align(n) == 0
        off = o + n


def test_tiny_block_lives_until_all_its_values_die(heap):
    a, b, c, d = heap.alloc(1), heap.alloc(2), heap.alloc(4), heap.alloc(8)
    base = a.address
    e = heap.alloc(1)                  # no room: a new block, which the cache keeps
    assert e.address == base + 16
    assert cached_spans(heap)[1] == (base + 16, 1)
    s = span_of(heap, base)
    idx = (base - s["start"]) // 16
    assert s["tiny"] and s["elemsize"] == 16
    assert heap.stats().heap_alloc == 32
    del a, b, c
    s = span_of(heap, base)
    assert not (s["free_bits"] >> idx) & 1, "the block died with a value alive"
    assert s["nfreed"] == 0
    assert heap.stats().heap_alloc == 32
    assert heap.owns(base) and heap.owns(base + 15)
    assert read(d) == bytes(8)
    del d
    s = span_of(heap, base)
    assert s["nfreed"] == 1
    assert (s["free_bits"] >> idx) & 1, "the dead block's slot is not marked free"
    assert heap.stats().heap_alloc == 16
    assert not heap.owns(base)
    st = heap.stats()
    assert st.by_size[2].mallocs == 5 and st.by_size[2].frees == 4
    assert st.heap_objects == 1
    del e
    check_heap(heap)


def test_tiny_values_are_zero_even_in_reused_blocks(heap):
    seen = set()
    reused = 0
    for i in range(6000):
        n = 1 + i % 15
        b = heap.alloc(n)
        assert read(b) == bytes(n), i
        fill(b, 0xFF)
        reused += b.address in seen
        seen.add(b.address)
        del b
    assert reused > 0
    check_heap(heap)


# ---------------------------------------------------------------------------
# Block

def test_block_attributes(heap):
    b = heap.alloc(100)
    assert isinstance(b, Block)
    assert b.nbytes == 100 and len(b) == 100
    assert b.size_class == 9 and b.slot_size == 112
    assert b.heap is heap
    assert isinstance(b.address, int) and b.address % 16 == 0
    m = memoryview(b)
    assert not m.readonly and m.nbytes == 100 and m.format == "B" and m.itemsize == 1
    assert ctypes.addressof(ctypes.c_char.from_buffer(b)) == b.address
    assert f"{b.address:#x}" in repr(b) and "100" in repr(b)
    big = heap.alloc(100000)
    assert (big.size_class, big.slot_size, big.nbytes) == (0, 13 * PAGE_SIZE, 100000)
    for attr in ("address", "nbytes", "size_class", "slot_size"):
        with pytest.raises(AttributeError):
            setattr(b, attr, 1)
    check_heap(heap)


def test_blocks_do_not_overlap(heap):
    rng = np.random.default_rng(7)
    blocks = [heap.alloc(int(n)) for n in rng.integers(1, 50000, 500)]
    spans = sorted((b.address, b.address + b.nbytes) for b in blocks)
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert e0 <= s1
    for i, b in enumerate(blocks):
        memoryview(b)[:] = bytes([i % 256]) * b.nbytes
    for i, b in enumerate(blocks):
        assert read(b) == bytes([i % 256]) * b.nbytes
    check_heap(heap)


def test_memoryview_keeps_block_alive(heap):
    b = heap.alloc(100)
    addr = b.address
    memoryview(b)[:] = b"z" * 100
    m = memoryview(b)
    del b
    gc.collect()
    others = [heap.alloc(100) for _ in range(3 * CLASS_NELEMS[9])]
    assert addr not in {o.address for o in others}
    assert heap.owns(addr)
    for o in others:
        fill(o, 0xEE)
    assert bytes(m) == b"z" * 100
    m[0] = ord("y")
    assert bytes(m[:2]) == b"yz"
    del others, o
    check_heap(heap)
    # Once the view dies the memory does get reused: the check above was real.
    del m
    assert not heap.owns(addr)
    again = [heap.alloc(100) for _ in range(3 * CLASS_NELEMS[9])]
    assert addr in {a.address for a in again}
    check_heap(heap)


def test_numpy_frombuffer_keeps_block_alive(heap):
    b = heap.alloc(8 * 1000)
    addr = b.address
    arr = np.frombuffer(b, dtype=np.float64)
    assert arr.flags.writeable and arr.ctypes.data == addr and arr.size == 1000
    arr[:] = np.arange(1000)
    view = arr[10:20]
    del b, arr
    gc.collect()
    others = [heap.alloc(8000) for _ in range(12)]
    assert addr not in {o.address for o in others}
    for o in others:
        fill(o, 0xEE)
    assert view.tolist() == list(map(float, range(10, 20)))
    assert heap.owns(view)
    del view, others, o
    assert not heap.owns(addr)
    check_heap(heap)


def test_large_block_kept_alive_by_view(heap):
    b = heap.alloc(1 * MiB)
    addr = b.address
    m = memoryview(b)[PAGE_SIZE:2 * PAGE_SIZE]
    m[:] = b"L" * PAGE_SIZE
    del b
    c = heap.alloc(1 * MiB)
    assert c.address != addr
    assert bytes(m) == b"L" * PAGE_SIZE
    del m
    d = heap.alloc(1 * MiB)
    assert d.address == addr
    assert read(d) == bytes(1 * MiB)


# ---------------------------------------------------------------------------
# owns()

def test_owns(heap):
    b = heap.alloc(100)
    big = heap.alloc(100000)
    arr = np.frombuffer(b, dtype=np.uint8)
    # ints
    assert heap.owns(b.address) and heap.owns(b.address + 99)
    assert heap.owns(big.address) and heap.owns(big.address + 99999)
    assert not heap.owns(-1) and not heap.owns(0) and not heap.owns(2**64)
    assert not heap.owns(2**48 + b.address)
    # Blocks
    assert heap.owns(b) and heap.owns(big)
    # buffers
    assert heap.owns(memoryview(b))
    assert heap.owns(memoryview(b)[10:20])
    assert heap.owns(arr) and heap.owns(arr[10:20]) and heap.owns(arr[::-3])
    assert heap.owns(np.frombuffer(big, dtype=np.int32)[5:9])
    # zero-length views are judged by what they stand on
    assert heap.owns(memoryview(b)[3:3])
    assert heap.owns(arr[5:5])
    assert heap.owns(memoryview(heap.alloc(0)))
    # foreign memory
    foreign = bytearray(100)
    assert not heap.owns(foreign)
    assert not heap.owns(memoryview(foreign))
    assert not heap.owns(np.zeros(10))
    assert not heap.owns(np.frombuffer(foreign, dtype=np.uint8)[0:0])
    assert not heap.owns(np.zeros(10).ctypes.data)
    assert not heap.owns(b"bytes")
    with pytest.raises(TypeError):
        heap.owns(object())
    # another heap's memory
    with Heap() as other:
        ob = other.alloc(100)
        obig = other.alloc(100000)
        assert not heap.owns(ob) and not heap.owns(obig)
        assert not heap.owns(ob.address) and not heap.owns(obig.address)
        assert not heap.owns(memoryview(ob)) and not heap.owns(memoryview(ob)[1:1])
        assert not heap.owns(np.frombuffer(obig, dtype=np.uint8)[7:70])
        assert other.owns(ob) and other.owns(memoryview(obig)[1:2])
        assert not other.owns(b) and not other.owns(b.address)
        del ob, obig
    # the tail of a span past its last slot holds no object
    mid = heap.alloc(1408)             # class 35: 11 slots in 2 pages, 896 B tail
    s = span_of(heap, mid.address)
    assert (s["nelems"], s["npages"]) == (11, 2)
    tail = s["start"] + 11 * 1408
    assert not heap.owns(tail) and not heap.owns(s["start"] + 2 * PAGE_SIZE - 1)
    assert heap.owns(mid.address + 1407)
    # dead memory
    addr = big.address
    del big
    assert not heap.owns(addr)
    check_heap(heap)


# ---------------------------------------------------------------------------
# Statistics

def assert_identities(st):
    assert st.heap_sys == st.heap_inuse + st.heap_idle
    assert st.heap_released <= st.heap_idle
    assert st.heap_objects == st.mallocs - st.frees
    assert len(st.by_size) == NUM_SIZE_CLASSES
    assert sum(c.mallocs for c in st.by_size) == st.mallocs
    assert sum(c.frees for c in st.by_size) == st.frees
    assert [c.size for c in st.by_size] == CLASS_SIZE
    assert st.heap_alloc <= st.total_alloc
    assert st.heap_alloc <= st.heap_inuse
    assert st.heap_sys % PAGE_SIZE == 0 and st.heap_inuse % PAGE_SIZE == 0


def test_stats_of_new_heap(heap):
    st = heap.stats()
    assert (st.heap_alloc, st.heap_sys, st.heap_idle, st.heap_inuse, st.heap_released,
            st.heap_objects, st.mallocs, st.frees, st.total_alloc, st.sweeps) == \
        (0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    assert_identities(st)
    assert isinstance(st, pyarena.MemStats)
    with pytest.raises(Exception):
        st.heap_alloc = 1          # frozen


def test_stats_count_slot_sizes_exactly(heap):
    sizes = [16, 17, 24, 25, 100, 1000, 1025, 5000, 32768, 32769, 100000, 3 * MiB + 1]
    want_slot = []
    for n in sizes:
        if n > MAX_SMALL_SIZE:
            want_slot.append((0, -(-n // PAGE_SIZE) * PAGE_SIZE))
        else:
            c = alloc_class(n)
            want_slot.append((c, CLASS_SIZE[c]))
    before = heap.stats()
    blocks = []
    for n, (c, slot) in zip(sizes, want_slot):
        st0 = heap.stats()
        b = heap.alloc(n)
        blocks.append(b)
        st1 = heap.stats()
        assert (b.size_class, b.slot_size) == (c, slot)
        assert st1.heap_alloc - st0.heap_alloc == slot, n
        assert st1.total_alloc - st0.total_alloc == slot, n
        assert st1.mallocs - st0.mallocs == 1
        assert st1.by_size[c].mallocs - st0.by_size[c].mallocs == 1
        assert st1.heap_objects - st0.heap_objects == 1
        assert_identities(st1)
    del b                              # only `blocks` holds them now
    mid = heap.stats()
    assert mid.heap_alloc - before.heap_alloc == sum(s for _, s in want_slot)
    for c, slot in want_slot:
        st0 = heap.stats()
        blocks.pop(0)
        st1 = heap.stats()
        assert st0.heap_alloc - st1.heap_alloc == slot
        assert st1.frees - st0.frees == 1
        assert st1.by_size[c].frees - st0.by_size[c].frees == 1
        assert st1.total_alloc == st0.total_alloc
        assert_identities(st1)
    end = heap.stats()
    assert end.heap_alloc == before.heap_alloc
    assert end.heap_objects == before.heap_objects
    check_heap(heap)


def test_stats_tiny_counts_blocks_not_values(heap):
    st0 = heap.stats()
    vals = [heap.alloc(4) for _ in range(4)]    # one 16-byte block
    st1 = heap.stats()
    assert st1.heap_alloc - st0.heap_alloc == 16
    assert st1.mallocs - st0.mallocs == 4
    assert st1.by_size[2].mallocs - st0.by_size[2].mallocs == 4
    assert_identities(st1)
    vals.append(heap.alloc(4))                   # a second block
    assert heap.stats().heap_alloc - st0.heap_alloc == 32
    del vals
    st2 = heap.stats()
    assert st2.frees - st0.frees == 5
    assert st2.heap_objects == st0.heap_objects
    assert_identities(st2)


def test_stats_identities_under_mixed_workload(heap):
    rng = np.random.default_rng(3)
    live = []
    for step in range(3000):
        r = rng.random()
        if r < 0.6 or not live:
            n = int(rng.choice([rng.integers(0, 16), rng.integers(16, 2048),
                                rng.integers(2048, 40000), rng.integers(40000, 300000)],
                               p=[0.3, 0.4, 0.25, 0.05]))
            live.append(heap.alloc(n))
        else:
            live.pop(int(rng.integers(len(live))))
        if step % 250 == 0:
            assert_identities(heap.stats())
            check_heap(heap)
    st = heap.stats()
    assert_identities(st)
    assert st.heap_objects == sum(1 for b in live if b.nbytes)
    live.clear()
    st = heap.stats()
    assert_identities(st)
    assert st.heap_objects == 0
    assert st.sweeps > 0
    assert heap.release() >= 0
    st = heap.stats()
    assert_identities(st)
    check_heap(heap)


def test_stats_count_frees_from_other_threads_and_dead_caches(heap):
    made = []

    def work():
        made.extend(heap.alloc(200) for _ in range(50))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    gc.collect()
    assert num_caches(heap) == 0
    st = heap.stats()
    assert st.mallocs == 50 and st.heap_objects == 50
    assert st.heap_alloc == 50 * 208
    main_block = heap.alloc(200)
    assert num_caches(heap) == 1
    del made[:]
    st = heap.stats()
    assert st.mallocs == 51 and st.frees == 50 and st.heap_alloc == 208
    assert_identities(st)
    del main_block
    check_heap(heap)


# ---------------------------------------------------------------------------
# close()

def test_close_refuses_allocation_but_keeps_blocks():
    h = Heap()
    b = h.alloc(100)
    big = h.alloc(100000)
    memoryview(b)[:] = b"a" * 100
    assert not h.closed
    h.close()
    assert h.closed
    for n in (0, 1, 100, 100000):
        with pytest.raises(ValueError):
            h.alloc(n)
    assert read(b) == b"a" * 100
    memoryview(b)[:] = b"b" * 100
    memoryview(big)[-5:] = b"12345"
    assert read(b) == b"b" * 100 and read(big)[-5:] == b"12345"
    assert h.owns(b) and h.owns(b.address)
    h.close()                          # twice: fine
    assert h.closed
    st = h.stats()
    assert st.heap_objects == 2 and st.heap_sys > 0
    check_heap(h)
    del b, big
    st = h.stats()
    assert st.heap_objects == 0 and st.frees == 2


def test_close_with_no_live_blocks_unmaps_everything():
    h = Heap()
    bs = [h.alloc(n) for n in (3, 100, 5000, 100000)]
    st = h.stats()
    assert st.heap_sys > 0
    del bs
    h.close()
    st = h.stats()
    assert st.heap_sys == 0 and st.heap_inuse == 0 and st.heap_idle == 0
    assert st.heap_released == 0
    assert st.mallocs == 4 and st.frees == 4 and st.heap_objects == 0
    assert h.release() == 0
    assert not h.owns(12345)
    with pytest.raises(ValueError):
        h.alloc(1)
    h.close()
    assert h.stats().heap_sys == 0


def test_heap_as_context_manager():
    with Heap() as h:
        assert isinstance(h, Heap) and not h.closed
        b = h.alloc(64)
        memoryview(b)[:] = b"c" * 64
    assert h.closed
    with pytest.raises(ValueError):
        h.alloc(64)
    assert read(b) == b"c" * 64
    del b
    with pytest.raises(RuntimeError):
        with Heap() as h2:
            raise RuntimeError("boom")
    assert h2.closed
    assert h2.stats().heap_sys == 0


def test_blocks_outlive_a_dropped_heap():
    h = Heap()
    b = h.alloc(1000)
    memoryview(b)[:] = b"p" * 1000
    h.close()
    del h
    gc.collect()
    assert read(b) == b"p" * 1000
    assert b.heap.closed
    del b


# ---------------------------------------------------------------------------
# The default heap and module-level functions

def test_module_functions_use_default_heap():
    d = pyarena.default_heap()
    assert d is pyarena.default_heap()
    assert isinstance(d, Heap) and not d.closed
    st0 = pyarena.stats()
    b = pyarena.alloc(300)
    assert b.heap is d
    assert d.owns(b)
    st1 = pyarena.stats()
    assert st1.mallocs - st0.mallocs == 1
    assert st1.heap_alloc - st0.heap_alloc == b.slot_size == 320
    assert d.stats().mallocs == st1.mallocs
    c = pyarena.alloc(40000, zero=False, align=4096)
    assert c.heap is d and c.address % 4096 == 0
    big = pyarena.alloc(1 * MiB)
    fill(big, 9)
    del big
    n = pyarena.release()
    assert isinstance(n, int) and n >= 1 * MiB
    st = pyarena.stats()
    assert st.heap_released == st.heap_idle
    assert_identities(st)
    check_heap(d)
    del b, c


# ---------------------------------------------------------------------------
# Size classes

def test_size_class_values():
    assert pyarena.size_class(0) == (0, 0)
    assert pyarena.size_class(1) == (1, 8)
    assert pyarena.size_class(8) == (1, 8)
    assert pyarena.size_class(9) == (2, 16)
    assert pyarena.size_class(24) == (3, 24)
    assert pyarena.size_class(1016) == (32, 1024)
    assert pyarena.size_class(1017) == (32, 1024)
    assert pyarena.size_class(1024) == (32, 1024)
    assert pyarena.size_class(1025) == (33, 1152)
    assert pyarena.size_class(32768) == (67, 32768)
    assert pyarena.size_class(32769) == (0, 40960)
    assert pyarena.size_class(100000) == (0, 106496)
    with pytest.raises(ValueError):
        pyarena.size_class(-1)
    with pytest.raises(TypeError):
        pyarena.size_class(1.5)


def test_size_class_every_size_matches_go_table():
    for n in range(1, MAX_SMALL_SIZE + 1):
        c = go_class(n)
        assert pyarena.size_class(n) == (c, CLASS_SIZE[c]), n


def test_size_classes_match_go_table():
    rows = pyarena.size_classes()
    assert len(rows) == 67
    for row, go in zip(rows, GO):
        assert row.size_class == int(go["class"])
        assert row.bytes_per_obj == int(go["bytes_per_obj"])
        assert row.objects == int(go["objects"])
        assert row.npages == int(go["npages"])
        assert row.bytes_per_span == int(go["bytes_per_span"])
        assert row.tail_waste == int(go["tail_waste"])
        assert row.min_align == int(go["min_align"])


def test_constants():
    assert PAGE_SIZE == 8192
    assert MAX_SMALL_SIZE == 32768
    assert NUM_SIZE_CLASSES == 68


# ---------------------------------------------------------------------------
# The OS says no

def run_isolated(code, timeout=120):
    """Run code in a fresh interpreter importing this pyarena; return its
    stdout lines. Used where an allocation failure must come from the OS."""
    import os
    import subprocess
    import sys
    from support import pyarena_env
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=timeout, env=pyarena_env())
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r.stdout.split("\n")


def test_os_refusal_is_memory_error_and_heap_stays_usable():
    out = run_isolated("""
import re, resource
import pyarena
from pyarena._testing import check_heap
h = pyarena.Heap()
keep = h.alloc(100)
memoryview(keep)[:] = b"k" * 100
vm = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), resource.RLIM_INFINITY))
st0 = h.stats()
for i in range(3):
    try:
        h.alloc(1 << 30)
        print("allocated")
    except MemoryError as e:
        print("MemoryError", "1073741824" in str(e))
    st = h.stats()
    assert st.heap_sys == st0.heap_sys and st.mallocs == st0.mallocs, st
    assert st.metadata_sys <= st0.metadata_sys + (1 << 20), (st.metadata_sys, st0.metadata_sys)
    check_heap(h)
assert bytes(keep) == b"k" * 100
b = h.alloc(1 << 20)
assert bytes(b) == bytes(1 << 20)
small = [h.alloc(n) for n in (1, 16, 1000, 32768)]
check_heap(h)
print("usable")
""")
    assert out[:4] == ["MemoryError True"] * 3 + ["usable"]


def test_allocation_beyond_ram_and_swap_is_refused_like_go():
    # Go's sysMap maps committed (accounted) memory, so under Linux's
    # heuristic (0) or strict (2) overcommit a request larger than RAM plus
    # swap fails with "out of memory" -- as bytearray and numpy.empty raise
    # MemoryError here. Only with overcommit_memory=1 may it succeed.
    # Nothing below touches the memory: a wrong success costs no RAM.
    mode = int(Path("/proc/sys/vm/overcommit_memory").read_text())
    out = run_isolated("""
import os
import pyarena
ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
swap = 0
for line in open("/proc/meminfo"):
    if line.startswith("SwapTotal:"):
        swap = int(line.split()[1]) * 1024
n = 2 * (ram + swap)
try:
    bytearray(n)
    print("bytearray ok")
except MemoryError:
    print("bytearray MemoryError")
h = pyarena.Heap()
try:
    b = h.alloc(n)
    print("pyarena ok", b.nbytes == n)
    del b
except MemoryError:
    print("pyarena MemoryError")
h.close()
print("heap_sys", h.stats().heap_sys)
""")
    if mode == 1:
        assert out[1] == "pyarena ok True"
    else:
        assert out[0] == "bytearray MemoryError"
        assert out[1] == "pyarena MemoryError", \
            "a request larger than RAM + swap was mapped (MAP_NORESERVE + mprotect)"
    assert out[2] == "heap_sys 0"


# ---------------------------------------------------------------------------
# Threads

def test_threads_allocate_and_free_concurrently():
    import random
    import sys
    h = Heap()
    shared = []
    lock = threading.Lock()
    errors = []

    def work(tid):
        rng = random.Random(tid)
        mine = []
        try:
            for _ in range(1500):
                r = rng.random()
                if r < 0.55:
                    n = rng.choice([rng.randint(0, 15), rng.randint(16, 2000),
                                    rng.randint(2000, 33000), rng.randint(300000, 900000)])
                    b = h.alloc(n)
                    a = np.frombuffer(b, dtype=np.uint8)
                    if a.any():
                        errors.append(("not zero", tid, n, hex(b.address)))
                    a[:] = tid + 1
                    mine.append(b)
                    if rng.random() < 0.2:
                        with lock:
                            shared.append(b)
                elif mine:
                    b = mine.pop(rng.randrange(len(mine)))
                    if not (np.frombuffer(b, dtype=np.uint8) == tid + 1).all():
                        errors.append(("overwritten", tid, b.nbytes, hex(b.address)))
                if rng.random() < 0.1:
                    with lock:
                        if shared:
                            shared.pop(rng.randrange(len(shared)))
        except Exception as e:       # pragma: no cover - reported below
            errors.append(repr(e))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    gc.collect()
    assert num_caches(h) == 0, "dead threads' caches were not returned"
    check_heap(h)
    shared.clear()
    st = h.stats()
    assert st.heap_objects == 0 and st.heap_alloc == 0
    assert st.frees == st.mallocs
    check_heap(h)
    h.close()
    assert h.stats().heap_sys == 0
