"""Heap.check(): the walk over every span and object finds damage to each
invariant it guards (made through _testing.corrupt), never crashes on it,
and passes on healthy heaps under every kind of use, threads included."""

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import pyarena

# Subprocesses import the pyarena under test, whatever their working directory.
from support import pyarena_env
SUBPROCESS_ENV = pyarena_env()
from pyarena import HeapCorruptionError, _testing


def filled(h):
    """A heap with small, tiny, large and arena values alive, some freed."""
    keep = [h.alloc(n) for n in (1, 5, 16, 100, 100, 700, 5000, 40000, 300000)]
    drop = [h.alloc(100) for _ in range(50)]
    del drop[::2]
    arena = pyarena.Arena(heap=h, chunk_size=1 << 20)
    keep.append(arena.zeros(1000))
    keep.append(h.zeros((64, 64)))
    return keep, drop, arena


def test_check_counts_live_objects():
    h = pyarena.Heap()
    assert h.check() == 0
    blocks = [h.alloc(100) for _ in range(10)]
    assert h.check() == 10
    tiny = [h.alloc(3) for _ in range(7)]
    assert h.check() == 17            # tiny values one by one
    big = h.alloc(1 << 20)
    assert h.check() == 18
    del blocks[:5], tiny[:3], big
    assert h.check() == 9


def test_check_passes_after_mixed_use():
    h = pyarena.Heap()
    keep, drop, arena = filled(h)
    assert h.check() == h.stats().heap_objects
    arena.free()
    del keep
    h.release()
    assert h.check() == h.stats().heap_objects


def damaged(setup, what):
    """Run setup (code that leaves `h` and `victim` bound) in a fresh
    interpreter, damage the victim's span, and return the kinds check()
    reported. A subprocess: a crash fails the test, and the damaged heap
    never meets the other tests (it exits without freeing anything)."""
    code = textwrap.dedent(f"""
        import pyarena
        from pyarena import _testing
        h = pyarena.Heap()
        keep = [h.alloc(n) for n in (1, 5, 16, 100, 100, 700, 5000, 40000, 300000)]
        drop = [h.alloc(100) for _ in range(50)]
        del drop[::2]
        arena = pyarena.Arena(heap=h, chunk_size=1 << 20)
        keep.append(arena.zeros(1000))
        assert h.check() == h.stats().heap_objects
        """) + textwrap.dedent(setup) + textwrap.dedent(f"""
        _testing.corrupt(h, victim, {what!r})
        try:
            h.check()
            print("clean")
        except pyarena.HeapCorruptionError as e:
            assert isinstance(e, RuntimeError)
            assert all(isinstance(p.address, int) and isinstance(p.size, int)
                       for p in e.problems)
            print(",".join(sorted({{p.kind for p in e.problems}})))
        import os
        os._exit(0)
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=SUBPROCESS_ENV)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.strip().split(","))


@pytest.mark.parametrize("what,kind", [
    ("alloc_count", "alloc-count"),
    ("nfreed", "nfreed"),
    ("free_bits", "free-bits"),
    ("pages_released", "pages-released"),
])
@pytest.mark.parametrize("size", [100, 5000, 300000])
def test_damage_is_reported_with_its_kind(what, kind, size):
    kinds = damaged(f"v = h.alloc({size}); victim = v.address\n", what)
    if size > pyarena.MAX_SMALL_SIZE and what != "pages_released":
        kind = "large-span"           # one object: its count, bits and nfreed together
    assert kind in kinds, kinds


@pytest.mark.parametrize("size", [100, 5000])
def test_damaged_alloc_cache_is_reported(size):
    assert "alloc-cache" in damaged(f"v = h.alloc({size}); victim = v.address\n",
                                    "alloc_cache")


def test_alloc_bits_above_freeindex_are_checked():
    # Slots at and above freeindex are allocated only if allocBits says so:
    # setting the bit of a free slot there disagrees with allocCount (and
    # with allocCache when it is in the window).
    setup = """
        h2 = pyarena.Heap()
        v = h2.alloc(2000)
        span = _testing.span_of(h2, v.address)
        assert span["freeindex"] == 1 and span["nelems"] > 3
        victim = span["start"] + 2 * span["elemsize"]
        h = h2
        """
    kinds = damaged(setup, "alloc_bits")
    assert "alloc-count" in kinds and "alloc-cache" in kinds, kinds


@pytest.mark.parametrize("size", [100, 100000])
def test_damaged_span_index_is_reported_not_followed(size):
    # spans[] pointing outside the metadata must be reported, never read.
    kinds = damaged(f"v = [h.alloc({size}) for _ in range(3)]; victim = v[1].address\n",
                    "spans_index")
    assert "bad-span-record" in kinds, kinds


def test_check_from_another_thread_while_this_one_allocates():
    h = pyarena.Heap()
    stop = threading.Event()
    errors = []

    def checker():
        while not stop.is_set():
            try:
                h.check()
            except Exception as e:       # a false alarm would land here
                errors.append(e)
                return

    t = threading.Thread(target=checker)
    t.start()
    try:
        live = []
        for i in range(20000):
            live.append(h.alloc((i * 37) % 3000 + 1))
            if len(live) > 300:
                del live[(i * 7) % len(live)]
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert h.check() == h.stats().heap_objects


def test_check_on_closed_and_unmapped_heaps():
    h = pyarena.Heap()
    b = h.alloc(64)
    h.close()
    assert h.check() == 1             # closed, still mapped for b
    del b
    h2 = pyarena.Heap()
    h2.close()                        # nothing alive: unmapped at once
    assert h2.check() == 0


def test_check_sees_arrays_numpy_made_through_the_handler():
    h = pyarena.Heap()
    with pyarena.numpy_allocator(h):
        xs = [np.ones(n) for n in (1, 10, 1000, 100000)]
        ys = [x * 2 for x in xs]
    assert h.check() == 8
    del xs
    assert h.check() == 4
