"""Threads: per-thread caches, blocks freed by threads that did not allocate
them, caches returned when threads end, and large clears (which release the
GIL in 256 KiB chunks) running beside small allocations."""

from __future__ import annotations

import gc
import queue
import random
import threading

import pytest

import pyarena
from pyarena import _testing

NTHREADS = 8
MiB = 1 << 20


def _sizes(rng: random.Random, n: int) -> list[int]:
    """Mostly tiny and small sizes, some up to 32 KiB, a few large."""
    out = []
    for _ in range(n):
        k = rng.random()
        if k < 0.30:
            out.append(rng.randint(1, 15))
        elif k < 0.80:
            out.append(rng.randint(16, 1024))
        elif k < 0.97:
            out.append(rng.randint(1025, 32768))
        else:
            out.append(rng.randint(32769, 200_000))
    return out


class _Pattern:
    """Per-thread byte patterns: pattern(seq, n) is a slice of one random
    buffer, so making and checking one costs a memcpy / memcmp."""

    def __init__(self, tid: int):
        self.buf = random.Random(1000 + tid).randbytes(200_000 + 256)

    def __call__(self, seq: int, n: int) -> bytes:
        off = (seq * 7) % 256
        return self.buf[off:off + n]


def _run_threads(targets):
    errors = []

    def wrap(fn, *args):
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append((threading.current_thread().name, exc))

    threads = [threading.Thread(target=wrap, args=(fn, *args), name=f"t{i}")
               for i, (fn, args) in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), f"{t.name} hung"
    if errors:
        name, exc = errors[0]
        raise AssertionError(f"{len(errors)} thread(s) failed; {name}: {exc!r}") from exc


def test_cross_thread_free():
    """8 threads allocate mixed sizes, write and check a per-thread pattern,
    and pass every block to the next thread, which checks and drops it."""
    heap = pyarena.Heap()
    rounds, batch = 40, 60
    inbox = [queue.Queue() for _ in range(NTHREADS)]
    counts = [0] * NTHREADS          # allocations made, per thread
    received = [0] * NTHREADS
    foreign = [0] * NTHREADS         # blocks received that another thread made
    barrier = threading.Barrier(NTHREADS)

    def check(item, who):
        tid, seq, b = item
        expect = _Pattern.cache[tid](seq, b.nbytes)
        assert bytes(memoryview(b)) == expect, \
            f"thread {who}: block from t{tid} #{seq} ({b!r}) corrupted"
        assert heap.owns(b.address)
        if tid != who:
            foreign[who] += 1
        received[who] += 1

    def worker(tid):
        rng = random.Random(tid)
        pat = _Pattern.cache[tid]
        dest = inbox[(tid + 1) % NTHREADS]
        mine = inbox[tid]
        held = []                    # some blocks kept a while before sending
        seq = 0
        done = False                 # the sender's last block has arrived
        barrier.wait()
        for _ in range(rounds):
            out = []
            for n in _sizes(rng, batch):
                b = heap.alloc(n, zero=rng.random() < 0.5)
                counts[tid] += 1
                p = pat(seq, n)
                memoryview(b)[:] = p
                assert bytes(b) == p
                out.append((tid, seq, b))
                seq += 1
            # Check everything held so far is intact, then send part of it.
            for item in held:
                t, s, b = item
                assert bytes(b) == pat(s, b.nbytes), f"t{tid}: own block #{s} corrupted"
            rng.shuffle(out)
            held.extend(out[: batch // 3])
            for item in out[batch // 3:]:
                dest.put(item)
            if len(held) > 3 * batch:
                for item in held[:batch]:
                    dest.put(item)
                del held[:batch]
            out = item = b = None
            # Drain what has arrived, without waiting.
            while not done:
                try:
                    got = mine.get_nowait()
                except queue.Empty:
                    break
                if got is None:
                    done = True
                else:
                    check(got, tid)
                got = None
        for item in held:
            dest.put(item)
        held.clear()
        item = None
        dest.put(None)
        while not done:
            got = mine.get(timeout=60)
            if got is None:
                break
            check(got, tid)
            got = None

    _Pattern.cache = [_Pattern(t) for t in range(NTHREADS)]
    _run_threads([(worker, (t,)) for t in range(NTHREADS)])
    gc.collect()

    total = sum(counts)
    assert sum(received) == total
    assert all(f > 0 for f in foreign), foreign
    s = heap.stats()
    assert s.heap_objects == 0, s.heap_objects
    assert s.mallocs == total, (s.mallocs, total)
    assert s.frees == total
    assert s.heap_alloc == 0, "threads ended, so no tiny block is cached"
    assert s.heap_sys == s.heap_inuse + s.heap_idle
    assert _testing.num_caches(heap) == 0, "caches of ended threads not returned"
    _testing.check_heap(heap)
    # Everything died, so no span is in use.
    assert s.heap_inuse == 0, s.heap_inuse
    heap.close()


def test_num_caches_follows_live_threads():
    """One cache per live thread that used the heap; returned at thread end."""
    heap = pyarena.Heap()
    assert _testing.num_caches(heap) == 0
    started = threading.Barrier(NTHREADS + 1)
    go = threading.Event()
    keep = []
    lock = threading.Lock()

    def worker(tid):
        bs = [heap.alloc(n) for n in (1, 7, 16, 100, 3000, 40000)]
        with lock:
            keep.extend(bs)
        started.wait()
        go.wait(60)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(NTHREADS)]
    for t in threads:
        t.start()
    started.wait(60)
    try:
        assert _testing.num_caches(heap) == NTHREADS
        b = heap.alloc(64)                     # the main thread's own cache
        assert _testing.num_caches(heap) == NTHREADS + 1
    finally:
        go.set()
        for t in threads:
            t.join(60)
    gc.collect()
    assert _testing.num_caches(heap) == 1      # only the main thread's
    s = heap.stats()
    assert s.mallocs == NTHREADS * 6 + 1
    assert s.heap_objects == len(keep) + 1
    del b
    keep.clear()
    s = heap.stats()
    assert s.heap_objects == 0 and s.frees == s.mallocs
    _testing.check_heap(heap)


def test_heap_outlives_thread():
    """Blocks and counts of a thread that ended stay; the heap keeps working
    and never hands out a slot that a block from the ended thread holds."""
    heap = pyarena.Heap()
    box = {}
    sizes = [1, 2, 3, 5, 8, 15, 16, 24, 48, 100, 512, 1000, 4096, 20000, 40000, 300000]

    def worker():
        rng = random.Random(7)
        blocks = []
        for i in range(600):
            n = sizes[i % len(sizes)]
            b = heap.alloc(n)
            memoryview(b)[:] = bytes([i & 255]) * n
            blocks.append((i, b))
        # Keep every third block; drop the others here.
        rng.shuffle(blocks)
        box["kept"] = [(i, b) for i, b in blocks if i % 3 == 0]
        box["mallocs"] = heap.stats().mallocs

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    gc.collect()
    kept = box["kept"]
    assert box["mallocs"] == 600
    assert _testing.num_caches(heap) == 0
    s = heap.stats()
    assert s.mallocs == 600, "mallocs of an ended thread were lost"
    assert s.heap_objects == len(kept) == 200
    assert s.frees == 400
    _testing.check_heap(heap)
    for i, b in kept:
        assert bytes(b) == bytes([i & 255]) * b.nbytes
        assert heap.owns(b.address)

    # The main thread allocates the same sizes: no overlap with kept blocks.
    mine = []
    for j in range(600):
        n = sizes[j % len(sizes)]
        b = heap.alloc(n)
        assert bytes(b) == bytes(n), "zero=True block not zeroed"
        memoryview(b)[:] = b"\xee" * n
        mine.append(b)
    ranges = sorted([(b.address, b.address + b.nbytes) for _, b in kept] +
                    [(b.address, b.address + b.nbytes) for b in mine])
    for (a0, e0), (a1, _) in zip(ranges, ranges[1:]):
        assert e0 <= a1, f"overlap at {a1:#x}"
    for i, b in kept:
        assert bytes(b) == bytes([i & 255]) * b.nbytes, "kept block overwritten"
    s = heap.stats()
    assert s.mallocs == 1200
    assert s.heap_objects == 800
    del b
    mine.clear()
    kept.clear()
    box.clear()
    s = heap.stats()
    assert s.heap_objects == 0 and s.frees == 1200
    _testing.check_heap(heap)
    heap.close()


def test_large_clears_beside_small_allocations():
    """Threads allocate dirty 8 MiB blocks with zero=True (cleared in 256 KiB
    chunks without the GIL) while others churn small blocks."""
    heap = pyarena.Heap()
    size = 8 * MiB
    zeros = bytes(size)
    nlarge, nsmall = 4, 4
    stop = threading.Event()
    large_done = [0]

    def large(tid):
        fill = bytes([0x80 | tid]) * size
        for it in range(6):
            # Dirty pages: fill a block, drop it, allocate again zeroed.
            d = heap.alloc(size, zero=False)
            memoryview(d)[:] = fill
            del d
            b = heap.alloc(size, zero=True)
            assert bytes(b) == zeros, f"t{tid} it{it}: 8 MiB zero=True block not zero"
            memoryview(b)[:] = fill
            c = heap.alloc(size // 2 + 12345, zero=True)
            assert bytes(c) == bytes(c.nbytes)
            assert bytes(b) == fill
            del b, c
        large_done[0] += 1

    def small(tid):
        rng = random.Random(tid)
        pat = _Pattern(tid)
        live = []
        seq = 0
        while not stop.is_set() or seq < 3000:
            n = rng.choice((rng.randint(1, 15), rng.randint(16, 2048),
                            rng.randint(2049, 32768)))
            b = heap.alloc(n)
            assert bytes(b) == bytes(n)
            memoryview(b)[:] = pat(seq, n)
            live.append((seq, b))
            seq += 1
            if len(live) > 300:
                s, x = live.pop(rng.randrange(len(live)))
                assert bytes(x) == pat(s, x.nbytes)
                del x
            if seq > 200_000:
                break
        for s, x in live:
            assert bytes(x) == pat(s, x.nbytes)

    def watcher():
        # Ends the small threads once the large ones are done.
        while large_done[0] < nlarge:
            threading.Event().wait(0.01)
        stop.set()

    targets = ([(large, (t,)) for t in range(nlarge)] +
               [(small, (t,)) for t in range(nsmall)] + [(watcher, ())])
    try:
        _run_threads(targets)
    finally:
        stop.set()
    gc.collect()
    s = heap.stats()
    assert s.heap_objects == 0
    assert _testing.num_caches(heap) == 0
    _testing.check_heap(heap)
    heap.close()


@pytest.mark.parametrize("nheaps", [1, 6])
def test_threads_with_several_heaps(nheaps):
    """Threads allocating from several heaps at once (the per-thread cache
    table is direct-mapped on the heap's serial: collisions must not mix
    heaps' caches)."""
    heaps = [pyarena.Heap() for _ in range(nheaps)]

    def worker(tid):
        rng = random.Random(tid)
        live = []
        for i in range(3000):
            h = heaps[rng.randrange(nheaps)]
            n = rng.choice((rng.randint(1, 15), rng.randint(16, 4096)))
            b = h.alloc(n)
            assert b.heap is h and h.owns(b.address)
            for other in heaps:
                if other is not h:
                    assert not other.owns(b.address)
            memoryview(b)[:] = bytes([i & 255]) * n
            live.append((i, b))
            if len(live) > 200:
                j, x = live.pop(rng.randrange(len(live)))
                assert bytes(x) == bytes([j & 255]) * x.nbytes
                del x

    _run_threads([(worker, (t,)) for t in range(NTHREADS)])
    gc.collect()
    for h in heaps:
        assert h.stats().heap_objects == 0
        assert _testing.num_caches(h) == 0
        _testing.check_heap(h)
        h.close()


def test_default_heap_from_threads():
    """pyarena.alloc from many threads at once: one default heap, every
    block of it, no block shared."""
    got = [None] * NTHREADS
    start = threading.Barrier(NTHREADS)

    def worker(tid):
        start.wait()
        bs = [pyarena.alloc(n) for n in (1, 9, 32, 500, 5000)]
        for b in bs:
            memoryview(b)[:] = bytes([tid]) * b.nbytes
        got[tid] = bs

    _run_threads([(worker, (t,)) for t in range(NTHREADS)])
    heap = pyarena.default_heap()
    assert all(b.heap is heap for bs in got for b in bs)
    ranges = sorted((b.address, b.address + b.nbytes) for bs in got for b in bs)
    for (a0, e0), (a1, _) in zip(ranges, ranges[1:]):
        assert e0 <= a1, f"overlap at {a1:#x}"
    for tid, bs in enumerate(got):
        for b in bs:
            assert bytes(b) == bytes([tid]) * b.nbytes


def test_fork_while_other_threads_allocate():
    # pthread_atfork handlers take every allocator lock around fork(), so a
    # child never inherits one held by a thread that does not exist there.
    import os
    heap = pyarena.Heap()
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            xs = [heap.alloc(s) for s in (8, 100, 5000, 40000, 300000)]
            del xs

    ts = [threading.Thread(target=churn) for _ in range(3)]
    for t in ts:
        t.start()
    try:
        for _ in range(20):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    blocks = [heap.alloc(s) for s in (8, 100, 5000, 40000, 300000)]
                    a = heap.zeros(1000)
                    code = 0 if not a.any() and len(blocks) == 5 else 2
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    finally:
        stop.set()
        for t in ts:
            t.join()
    _testing.check_heap(heap)


def test_a_joined_thread_has_given_its_cache_back():
    # The cache goes back when the thread's state is cleared, which is
    # before join() returns, not at the later pthread exit: no wait needed.
    heap = pyarena.Heap()
    keep = heap.alloc(64)                          # the main thread's cache
    for _ in range(200):
        t = threading.Thread(target=lambda: [heap.alloc(n) for n in (8, 64, 5000, 40000)])
        t.start()
        t.join()
        assert _testing.num_caches(heap) == 1
    st = heap.stats()
    assert st.mallocs == 1 + 200 * 4 and st.heap_objects == 1
    _testing.check_heap(heap)
