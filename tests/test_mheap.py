"""The page heap: arenas, spanOf, page ownership, coalescing of free runs,
release to the OS (scavenging) and zeroed pages, allocations larger than
one arena, and the OS constants.

Uses the hooks of pyarena._testing: span_of, page_owner, free_runs,
check_heap, in_persistent_alloc. check_heap runs after every step.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

import pyarena
from pyarena import PAGE_SIZE, Heap
from pyarena._testing import (check_heap, drop_large_spare, free_runs, in_persistent_alloc,
                              large_spare, page_owner, span_of)

ARENA = 64 << 20
GROW_PAGES = 512          # the heap maps 4 MiB at a time
KiB = 1024
MiB = 1024 * KiB


def pages(n):
    return n * PAGE_SIZE


def runs_rel(h, base):
    """free_runs with the start as a page number relative to base."""
    return [((start - base) // PAGE_SIZE, n, rel) for start, n, rel in free_runs(h)]


def fill(block, byte):
    memoryview(block)[:] = bytes([byte]) * block.nbytes


def page_samples(block):
    """One uint8 from the start, middle and end of every page of block."""
    a = np.frombuffer(block, dtype=np.uint8)
    n = block.nbytes
    idx = np.unique(np.concatenate([
        np.arange(0, n, PAGE_SIZE), np.arange(PAGE_SIZE // 2, n, PAGE_SIZE),
        np.arange(PAGE_SIZE - 1, n, PAGE_SIZE), [n - 1]]))
    idx = idx[idx < n]
    return a[idx]


# ---------------------------------------------------------------------------
# spanOf and page ownership

@pytest.mark.parametrize("nbytes,step", [(24, 1), (48, 1), (1408, 1), (3072, 3),
                                         (32768, 7)])
def test_span_of_every_byte_of_small_objects(heap, nbytes, step):
    blocks = [heap.alloc(nbytes) for _ in range(3)]
    cls = blocks[0].size_class
    for b in blocks:
        s = span_of(heap, b.address)
        assert s is not None
        assert s["state"] == "inuse"
        assert s["size_class"] == cls
        assert s["elemsize"] == b.slot_size
        span_end = s["start"] + s["npages"] * PAGE_SIZE
        assert s["start"] <= b.address < span_end
        assert (b.address - s["start"]) % s["elemsize"] == 0
        offsets = list(range(0, b.slot_size, step)) + [b.slot_size - 1]
        for off in offsets:
            t = span_of(heap, b.address + off)
            assert t is not None, off
            assert (t["start"], t["elemsize"], t["size_class"]) == \
                (s["start"], s["elemsize"], cls), off
        for p in range(s["start"], span_end, PAGE_SIZE):
            assert page_owner(heap, p)["start"] == s["start"]
    check_heap(heap)


def test_span_of_every_page_and_sampled_bytes_of_large_object(heap):
    b = heap.alloc(200 * KiB + 5)
    assert b.size_class == 0
    assert b.slot_size == pages(26)
    assert b.address % PAGE_SIZE == 0
    s = span_of(heap, b.address)
    assert s["start"] == b.address
    assert s["npages"] == 26
    assert s["elemsize"] == pages(26)
    assert s["size_class"] == 0
    assert s["nelems"] == 1 and s["alloc_count"] == 1
    for off in list(range(0, pages(26), 509)) + [pages(26) - 1]:
        t = span_of(heap, b.address + off)
        assert t is not None and t["start"] == b.address and t["npages"] == 26, off
        assert page_owner(heap, b.address + off)["start"] == b.address
    check_heap(heap)


def test_span_of_outside_objects_is_none(heap):
    b = heap.alloc(40 * KiB)
    first = heap.alloc(40 * KiB)   # noqa: F841  (keeps the layout)
    # First allocation of a new heap: the base of a 64 MiB-aligned arena.
    assert b.address % ARENA == 0
    assert span_of(heap, b.address - 1) is None          # below the arena
    assert page_owner(heap, b.address - 1) is None
    foreign = bytearray(4096)
    addr = np.frombuffer(foreign, dtype=np.uint8).ctypes.data
    assert span_of(heap, addr) is None
    assert page_owner(heap, addr) is None
    assert span_of(heap, 0) is None
    assert span_of(heap, 2**48 + b.address) is None
    assert span_of(heap, 2**64 - 1) is None
    # Pages past the last object lie in a free run: not an in-use span, but
    # the run's first page records the run.
    end = first.address + first.slot_size
    assert span_of(heap, end) is None
    owner = page_owner(heap, end)
    assert owner is not None
    assert owner["state"] == "free" and owner["start"] == end
    assert owner["npages"] == GROW_PAGES - 10
    check_heap(heap)


def test_span_of_dead_large_object_is_none(heap):
    b = heap.alloc(64 * KiB)
    addr = b.address
    assert span_of(heap, addr + 100) is not None
    del b
    # The thread keeps it as its large spare: an empty span, owning nothing.
    s = span_of(heap, addr)
    assert s["list"] == "spare" and s["alloc_count"] == 0 and large_spare(heap) == addr
    assert not heap.owns(addr) and not heap.owns(addr + 100)
    assert drop_large_spare(heap)
    assert span_of(heap, addr) is None
    assert span_of(heap, addr + 100) is None
    check_heap(heap)


def test_large_spare_serves_the_next_allocation_of_its_size_zeroed(heap):
    b = heap.alloc(100 * KiB)
    addr = b.address
    fill(b, 0xEE)
    inuse = heap.stats().heap_inuse
    del b
    assert large_spare(heap) == addr
    assert heap.stats().heap_inuse == inuse - pages(13), "a spare counts as idle"
    check_heap(heap)
    c = heap.alloc(100 * KiB)                 # same pages, all of them dirty
    assert c.address == addr and large_spare(heap) is None
    assert bytes(c) == bytes(100 * KiB)
    d = heap.alloc(100 * KiB, zero=False)
    del c                                     # the spare again
    e = heap.alloc(50 * KiB)                  # another size: from the page heap
    assert e.address != addr and large_spare(heap) == addr
    assert heap.release() > 0 and large_spare(heap) is None
    check_heap(heap)
    del d, e


def test_span_of_another_heaps_object_is_none(heap):
    with Heap() as other:
        b = other.alloc(100)
        big = other.alloc(100 * KiB)
        assert span_of(heap, b.address) is None
        assert span_of(heap, big.address) is None
        assert span_of(other, big.address)["start"] == big.address
        del b, big


# ---------------------------------------------------------------------------
# Free runs coalesce

def test_large_objects_are_carved_from_contiguous_pages(heap):
    bs = [heap.alloc(40 * KiB) for _ in range(3)]
    a = bs[0].address
    assert [b.address - a for b in bs] == [0, pages(5), pages(10)]
    assert all(b.slot_size == pages(5) for b in bs)
    assert runs_rel(heap, a) == [(15, GROW_PAGES - 15, GROW_PAGES - 15)]
    info = check_heap(heap)
    assert info["inuse_pages"] == 15 and info["spans"] == 3 and info["runs"] == 1


@pytest.mark.parametrize("order", [(1, 0, 2), (1, 2, 0), (0, 2, 1), (2, 0, 1), (0, 1, 2),
                                   (2, 1, 0)])
def test_free_runs_coalesce_into_one(heap, order):
    bs = [heap.alloc(40 * KiB) for _ in range(3)]
    a = bs[0].address
    assert [b.address - a for b in bs] == [0, pages(5), pages(10)]
    check_heap(heap)
    freed = set()
    for i in order:
        bs[i] = None
        drop_large_spare(heap)       # to the page heap at once
        freed.add(i)
        info = check_heap(heap)
        assert info["inuse_pages"] == 5 * (3 - len(freed))
        # Expected runs: maximal stretches of freed objects, the last one
        # merged with the never-used tail.
        want = []
        k = 0
        while k < 3:
            if k in freed:
                j = k
                while j < 3 and j in freed:
                    j += 1
                want.append([5 * k, 5 * (j - k), 0])
                k = j
            else:
                k += 1
        tail = [15, GROW_PAGES - 15, GROW_PAGES - 15]
        if want and want[-1][0] + want[-1][1] == 15:
            want[-1][1] += tail[1]
            want[-1][2] += tail[2]
        else:
            want.append(tail)
        assert runs_rel(heap, a) == [tuple(w) for w in want]
    assert runs_rel(heap, a) == [(0, GROW_PAGES, GROW_PAGES - 15)]
    assert check_heap(heap)["runs"] == 1


def test_freed_run_is_split_and_reused(heap):
    bs = [heap.alloc(80 * KiB) for _ in range(4)]     # 10 pages each
    a = bs[0].address
    assert [b.address - a for b in bs] == [0, pages(10), pages(20), pages(30)]
    bs[1] = None                                      # a 10-page hole
    drop_large_spare(heap)                            # (not kept as a spare)
    assert runs_rel(heap, a) == [(10, 10, 0), (40, GROW_PAGES - 40, GROW_PAGES - 40)]
    check_heap(heap)
    c = heap.alloc(48 * KiB)                          # 6 pages: split the hole
    assert c.size_class == 0 and c.address == a + pages(10)
    assert runs_rel(heap, a) == [(16, 4, 0), (40, GROW_PAGES - 40, GROW_PAGES - 40)]
    check_heap(heap)
    d = heap.alloc(40 * KiB)                          # 5 pages: not in the 4-page rest
    assert d.address == a + pages(40)
    e = heap.alloc(32 * KiB + 1)                      # 5 pages again
    assert e.address == a + pages(45)
    check_heap(heap)
    c = None                                          # 6 + 4 merge again
    drop_large_spare(heap)
    assert runs_rel(heap, a)[0] == (10, 10, 0)
    bs[0] = None
    drop_large_spare(heap)
    bs[2] = None
    drop_large_spare(heap)
    assert runs_rel(heap, a)[0] == (0, 30, 0)
    check_heap(heap)
    bs[3] = d = e = None
    drop_large_spare(heap)
    assert runs_rel(heap, a) == [(0, GROW_PAGES, GROW_PAGES - 50)]
    check_heap(heap)


def test_small_span_returns_its_pages_when_all_slots_die(heap):
    # Class of 1024 B: 8 per one-page span. Nine objects: the first span
    # is full and handed back to mcentral, the second is cached.
    bs = [heap.alloc(1024) for _ in range(9)]
    first = span_of(heap, bs[0].address)
    assert first["nelems"] == 8 and first["npages"] == 1
    assert first["list"] == "full" and not first["incache"]
    second = span_of(heap, bs[8].address)
    assert second["incache"] and second["start"] != first["start"]
    check_heap(heap)
    for i in range(7):
        bs[i] = None
        s = span_of(heap, first["start"])
        assert s is not None and s["nfreed"] == i + 1 and s["list"] == "partial"
        check_heap(heap)
    before = heap.stats().heap_inuse
    bs[7] = None
    # The first span of a class to empty is kept as the class's spare
    # (swept, nothing allocated), so the next span it needs costs no trip
    # to the page heap.
    s = span_of(heap, first["start"])
    assert s["list"] == "spare" and s["alloc_count"] == 0 and s["nfreed"] == 0
    # A span with no object is idle in MemStats (Go's HeapInuse rule).
    assert heap.stats().heap_inuse == before - PAGE_SIZE
    check_heap(heap)
    # release() gives spares back with the other free pages.
    heap.release()
    assert span_of(heap, first["start"]) is None
    assert heap.stats().heap_inuse == before - PAGE_SIZE
    run = [r for r in free_runs(heap) if r[0] <= first["start"] < r[0] + pages(r[1])]
    assert len(run) == 1 and run[0][2] == run[0][1], "released pages read as zero"
    check_heap(heap)


SPARE_BYTES = 256 * KiB


def test_emptied_spans_past_the_spare_budget_go_back_to_the_page_heap(heap):
    # A class keeps emptied spans as spares up to 256 KiB; the ones that
    # empty after that return their pages at once.
    nspans = SPARE_BYTES // PAGE_SIZE + 8          # 1 KiB slots: 8 to a page
    spans = []
    for _ in range(nspans):
        bs = [heap.alloc(1024) for _ in range(8)]
        spans.append((span_of(heap, bs[0].address)["start"], bs))
    heap.alloc(1024)                     # the cache moves on from the last
    before = heap.stats().heap_inuse
    for start, bs in spans:
        bs.clear()
    kinds = [(span_of(heap, st) or {}).get("list") or "released" for st, _ in spans]
    assert kinds.count("spare") == SPARE_BYTES // PAGE_SIZE
    assert kinds.count("released") == nspans - SPARE_BYTES // PAGE_SIZE
    # Spares are idle memory too: every emptied span left heap_inuse.
    assert heap.stats().heap_inuse == before - nspans * PAGE_SIZE
    check_heap(heap)
    heap.release()
    assert all((span_of(heap, st) or {}).get("list") is None for st, _ in spans)


# ---------------------------------------------------------------------------
# Release (scavenging) and zeroed pages

def test_release_returns_dirty_bytes_and_marks_every_free_page_released(heap):
    bs = [heap.alloc(40 * KiB) for _ in range(3)]
    for i in range(3):
        fill(bs[i], 0x5A)
    st = heap.stats()
    assert st.heap_released == st.heap_idle == pages(GROW_PAGES - 15)
    assert heap.release() == 0, "fresh pages are released already"
    bs[0] = None
    bs[2] = None
    check_heap(heap)
    st = heap.stats()
    assert st.heap_idle - st.heap_released == pages(10)
    got = heap.release()
    assert got == pages(10)
    st = heap.stats()
    assert st.heap_released == st.heap_idle == pages(GROW_PAGES - 5)
    assert st.heap_sys == st.heap_inuse + st.heap_idle
    for start, n, released in free_runs(heap):
        assert released == n
    info = check_heap(heap)
    assert info["released_pages"] == info["free_pages"] == GROW_PAGES - 5
    assert heap.release() == 0, "nothing left to release"


def test_release_with_small_objects_and_holes(heap):
    keep = []
    junk = []
    for i in range(200):
        (keep if i % 3 == 0 else junk).append(heap.alloc(3000 + 10 * i))
    big = [heap.alloc(100 * KiB) for _ in range(4)]
    for x in junk + big:
        fill(x, 0xEE)
    del x
    junk.clear()
    del big[1:3]
    check_heap(heap)
    n = heap.release()
    assert n > 0 and n % PAGE_SIZE == 0
    st = heap.stats()
    assert st.heap_released == st.heap_idle
    assert all(rel == npg for _, npg, rel in free_runs(heap))
    check_heap(heap)
    for b in keep:
        assert bytes(b) == bytes(b.nbytes)


def test_released_large_pages_read_zero_when_reallocated_without_clearing(heap):
    b = heap.alloc(256 * KiB)
    addr = b.address
    fill(b, 0xA5)
    nxt = heap.alloc(8 * KiB + 1)   # keeps the freed run from the tail
    del b
    check_heap(heap)
    assert heap.release() == pages(32)
    check_heap(heap)
    c = heap.alloc(256 * KiB, zero=False)
    assert c.address == addr
    assert not page_samples(c).any()
    assert bytes(c) == bytes(256 * KiB)
    check_heap(heap)
    del nxt


def test_unreleased_dirty_pages_are_cleared_for_zeroed_large_allocation(heap):
    b = heap.alloc(40 * KiB)
    fill(b, 0xFF)
    addr = b.address
    del b
    drop_large_spare(heap)
    # 10 pages over 5 dirty ones and 5 fresh ones: only the dirty ones need
    # clearing, but all must read zero.
    c = heap.alloc(80 * KiB)
    assert c.address == addr
    assert bytes(c) == bytes(80 * KiB)
    check_heap(heap)


def test_released_pages_read_zero_for_small_spans(heap):
    # Class of 1024 B, 8 per page. Fill and free a whole span: it becomes
    # the class's spare, and release() gives its page back to the OS.
    bs = [heap.alloc(1024) for _ in range(9)]
    for x in bs:
        fill(x, 0xC3)
    del x
    page = span_of(heap, bs[0].address)["start"]
    del bs[:8]
    assert span_of(heap, page)["list"] == "spare"
    assert heap.release() >= PAGE_SIZE
    assert span_of(heap, page) is None
    check_heap(heap)
    # Allocate without asking for zeroes until the page comes back.
    got = []
    for _ in range(64):
        x = heap.alloc(1024, zero=False)
        got.append(x)
        if page <= x.address < page + PAGE_SIZE:
            break
    again = [x for x in got if page <= x.address < page + PAGE_SIZE]
    assert again, "the released page was not reused"
    for x in again:
        assert bytes(x) == bytes(1024)
    check_heap(heap)


def test_close_with_live_block_releases_free_pages():
    h = Heap()
    keep = h.alloc(100)
    b = h.alloc(1 * MiB)
    fill(b, 1)
    del b
    st = h.stats()
    assert st.heap_idle - st.heap_released == 1 * MiB
    h.close()
    st = h.stats()
    assert st.heap_idle == st.heap_released
    memoryview(keep)[:] = b"k" * 100
    assert bytes(keep) == b"k" * 100
    check_heap(h)


# ---------------------------------------------------------------------------
# Allocations larger than an arena

def test_allocation_larger_than_an_arena(heap):
    small = heap.alloc(100)
    n = 100 * MiB
    b = heap.alloc(n)
    assert b.nbytes == n and b.slot_size == n and b.size_class == 0
    assert b.address % PAGE_SIZE == 0
    assert b.address % ARENA == 0, "a fresh reservation is arena-aligned"
    s = span_of(heap, b.address)
    assert s["start"] == b.address and s["npages"] == n // PAGE_SIZE
    # Every arena the object crosses maps its pages to the same span.
    for off in range(0, n, ARENA // 4):
        assert span_of(heap, b.address + off)["start"] == b.address
    assert span_of(heap, b.address + n - 1)["start"] == b.address
    assert span_of(heap, b.address + n) is None
    assert not page_samples(b).any()
    info = check_heap(heap)
    assert info["inuse_pages"] == n // PAGE_SIZE + 1
    # The last byte and bytes across the arena boundary are usable.
    a = np.frombuffer(b, dtype=np.uint8)
    boundary = ARENA - (b.address % ARENA)
    a[boundary - 1:boundary + 1] = 7
    a[-1] = 9
    assert a[boundary - 1] == 7 and a[boundary] == 7 and a[-1] == 9
    del a
    st = heap.stats()
    assert st.heap_inuse == n + PAGE_SIZE
    assert st.heap_sys == st.heap_inuse + st.heap_idle
    assert span_of(heap, small.address)["elemsize"] == small.slot_size
    del b
    check_heap(heap)
    st = heap.stats()
    assert st.heap_inuse == PAGE_SIZE
    assert st.heap_idle >= n


def test_dirty_huge_allocation_is_cleared_on_reuse(heap):
    n = 100 * MiB
    b = heap.alloc(n)
    addr = b.address
    a = np.frombuffer(b, dtype=np.uint8)
    a[::PAGE_SIZE] = 0xFF
    a[PAGE_SIZE // 2::PAGE_SIZE] = 0xFF
    a[-1] = 0xFF
    del a, b
    check_heap(heap)
    c = heap.alloc(n)
    assert c.address == addr
    assert not page_samples(c).any()
    check_heap(heap)
    del c
    assert heap.release() == n
    check_heap(heap)


def test_several_arenas_then_small_allocations_still_check(heap):
    bigs = [heap.alloc(70 * MiB) for _ in range(2)]
    smalls = [heap.alloc(s) for s in (16, 100, 1000, 5000, 30000)]
    for s in smalls:
        assert span_of(heap, s.address)["elemsize"] == s.slot_size
    check_heap(heap)
    bigs.pop(0)
    check_heap(heap)
    again = heap.alloc(70 * MiB)
    assert not page_samples(again).any()
    check_heap(heap)


# ---------------------------------------------------------------------------
# OS constants and metadata

def test_phys_page_size_is_the_os_page():
    assert pyarena.PHYS_PAGE_SIZE == os.sysconf("SC_PAGE_SIZE")
    assert PAGE_SIZE % pyarena.PHYS_PAGE_SIZE == 0 or \
        pyarena.PHYS_PAGE_SIZE % PAGE_SIZE == 0


def test_huge_page_constants():
    size = pyarena.PHYS_HUGE_PAGE_SIZE
    shift = pyarena.PHYS_HUGE_PAGE_SHIFT
    assert isinstance(size, int) and isinstance(shift, int)
    assert size == 0 or (size & (size - 1)) == 0
    if size:
        assert shift == int(math.log2(size))
        assert 1 << shift == size
        assert size > pyarena.PHYS_PAGE_SIZE
    else:
        assert shift == 0
    f = Path("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
    try:
        want = int(f.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        want = 0
    if want & (want - 1):
        want = 0
    assert size == want


def test_heap_objects_are_not_persistent_metadata(heap):
    blocks = [heap.alloc(n) for n in (1, 7, 16, 100, 4096, 32768, 40000, 3 * MiB)]
    for b in blocks:
        for off in (0, b.nbytes // 2, b.nbytes - 1):
            assert in_persistent_alloc(heap, b.address + off) is False
    zero = heap.alloc(0)
    assert in_persistent_alloc(heap, zero.address) is False
    st = heap.stats()
    assert st.persistent_chunks >= 1
    assert st.metadata_sys >= st.persistent_chunks * 256 * KiB
    check_heap(heap)
