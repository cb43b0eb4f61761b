"""Stress: threads allocate every kind of value, fill it, and pass it on.

Several threads share one heap. Each allocates values of one kind (or of
all kinds, mixed), checks that those that must read zero do, fills each
with a pattern of its own, and hands it through a queue to another thread,
which checks the pattern and drops it; some values are kept a while
first, and a few live to the end. The kinds: Blocks from Heap.alloc
(tiny, small, large, aligned), arrays from zeros/empty/full, typed values
from new/newarray with dtypes and ctypes types, values of an Arena that
all threads share and that is freed and replaced while they use it, and
arrays NumPy itself makes under pyarena.numpy_allocator(heap).

While they run, every live value is registered with its byte range: a new
value that overlaps a registered one is a failure at once (two live values
in the same memory). Afterwards the survivors still hold their patterns
and do not overlap, the MemStats identities hold, _testing.check_heap
passes, the threads' caches have been given back, and once everything is
dropped the heap holds no object.

Each scenario runs in a subprocess (this file run as a script), so a crash
is a test failure with its output, not the end of the test run.
PYARENA_STRESS_SCALE multiplies the work (default 1: the file in about
15 s on two cores).
"""

from __future__ import annotations

import bisect
import ctypes
import gc
import json
import os
import queue
import random
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
NTHREADS = 4
SABOTAGE = os.environ.get("PYARENA_STRESS_SABOTAGE") == "1"
KINDS = ("block", "array", "typed", "arena", "numpy")


# ---------------------------------------------------------------------------
# The scenario (in the child process).

class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_double), ("y", ctypes.c_double), ("n", ctypes.c_int32)]


def _range(v):
    """(address, nbytes) of a value."""
    if isinstance(v, np.ndarray):
        return v.__array_interface__["data"][0], v.nbytes
    if hasattr(v, "address"):                       # a Block
        return v.address, v.nbytes
    return ctypes.addressof(v), ctypes.sizeof(v)    # a ctypes value


class Registry:
    """Byte ranges of the live values, all threads together; registering
    one that overlaps another is a failure."""

    def __init__(self):
        self.lock = threading.Lock()
        self.starts = []          # sorted
        self.ends = {}            # start -> (end, what)
        self.checked = 0

    def add(self, lo, n, what):
        if n == 0:
            return
        hi = lo + n
        with self.lock:
            i = bisect.bisect_left(self.starts, lo)
            for j in (i - 1, i):
                if 0 <= j < len(self.starts):
                    s = self.starts[j]
                    e, w = self.ends[s]
                    if lo < e and s < hi:
                        raise AssertionError(
                            f"{what} [{lo:#x}, {hi:#x}) overlaps live {w} [{s:#x}, {e:#x})")
            if i < len(self.starts) and self.starts[i] == lo:
                raise AssertionError(f"{what} at {lo:#x}: an address already live")
            self.starts.insert(i, lo)
            self.ends[lo] = (hi, what)
            self.checked += 1

    def remove(self, lo, n):
        if n == 0:
            return
        with self.lock:
            i = bisect.bisect_left(self.starts, lo)
            assert i < len(self.starts) and self.starts[i] == lo, f"{lo:#x} not registered"
            del self.starts[i]
            del self.ends[lo]


class Patterns:
    """Per-thread byte patterns: pattern(seq, n) is a slice of one random
    buffer, so writing and checking one is a memmove and a compare."""

    SPAN = (1 << 20) + 512

    def __init__(self, tid):
        self.buf = random.Random(1000 + tid).randbytes(self.SPAN)

    def get(self, seq, n):
        off = (seq * 7) % 509
        if n <= self.SPAN - off:
            return self.buf[off:off + n]
        reps = n // (self.SPAN - off) + 1
        return (self.buf[off:] * reps)[:n]


class Stress:
    def __init__(self, kind, scale, seed):
        import pyarena

        self.pyarena = pyarena
        self.kind = kind
        self.heap = pyarena.Heap()
        self.reg = Registry()
        self.patterns = [Patterns(t) for t in range(NTHREADS)]
        self.inbox = [queue.Queue() for _ in range(NTHREADS)]
        self.arena = pyarena.Arena(chunk_size=1 << 20, heap=self.heap)
        self.arena_lock = threading.Lock()
        self.arenas_freed = 0
        self.survivors = []
        self.survivor_lock = threading.Lock()
        self.made = [0] * NTHREADS
        self.dropped = [0] * NTHREADS
        self.got = [0] * NTHREADS
        self.foreign = [0] * NTHREADS
        self.zero_checked = [0] * NTHREADS
        self.kinds_made = {}
        self.per_thread = int(8000 * scale)
        self.seed = seed
        self.barrier = threading.Barrier(NTHREADS)
        self.errors = []

    # -- making values -------------------------------------------------------

    def _size(self, rng):
        k = rng.random()
        if k < 0.25:
            return rng.randint(1, 15)
        if k < 0.75:
            return rng.randint(16, 2048)
        if k < 0.96:
            return rng.randint(2049, 32768)
        if k < 0.995:
            return rng.randint(32769, 600_000)
        # Clears of more than 1 MiB run with the GIL released, beside the
        # other threads' allocations and frees.
        return rng.randint(1 << 20, 3 << 20)

    def make(self, kind, rng):
        """(value, must read zero, label)."""
        h = self.heap
        n = self._size(rng)
        if kind == "block":
            zero = rng.random() < 0.6
            align = rng.choice((None, None, None, 8, 64, 4096))
            return h.alloc(n, zero=zero, align=align), zero, "Block"
        if kind == "array":
            dt = rng.choice(("u1", "f8", "i4", [("x", "f8"), ("n", "i2")]))
            items = max(1, n // np.dtype(dt).itemsize)
            which = rng.randrange(3)
            if which == 0:
                return h.zeros(items, dt), True, "zeros"
            if which == 1:
                return h.empty((items, 1), dt, order="F"), False, "empty"
            return h.full(items, 3, dt), False, "full"
        if kind == "typed":
            which = rng.randrange(4)
            if which == 0:
                return h.new(rng.choice((ctypes.c_double, Point, ctypes.c_int * 7))), True, "new"
            if which == 1:
                count = max(1, n // 24)
                return h.newarray(rng.choice((Point, ctypes.c_uint8)), count), True, "newarray"
            if which == 2:
                return h.new(rng.choice(("f8", "(3,4)i2", [("t", "u1"), ("v", "f8")]))), \
                    True, "new dtype"
            return h.newarray(rng.choice(("f4", "u1")), max(1, n // 4)), True, "newarray dtype"
        if kind == "arena":
            return self._arena_value(rng, n)
        if kind == "numpy":
            with self.pyarena.numpy_allocator(h):
                which = rng.randrange(3)
                items = max(1, n // 8)
                if which == 0:
                    return np.zeros(items), True, "np.zeros"
                if which == 1:
                    return np.ones(items) * 2.0, False, "np.ones * 2"
                return np.arange(items, dtype=np.int64).copy(), False, "np.arange"
        raise ValueError(kind)

    def _arena_value(self, rng, n):
        """A value of the shared arena; now and then the thread frees the
        arena and puts a new one in its place, while the others use it."""
        for _ in range(100):
            a = self.arena
            try:
                which = rng.randrange(4)
                if which == 0:
                    v = a.alloc(n)
                elif which == 1:
                    v = a.zeros(max(1, n // 8))
                elif which == 2:
                    v = a.new(rng.choice((Point, ctypes.c_double * 3)))
                else:
                    v = a.newarray(ctypes.c_uint8, n)
            except ValueError as e:
                if "freed arena" not in str(e):
                    raise
                # Another thread freed it and is putting a new one in its
                # place under the lock: wait for that, then take the new one.
                with self.arena_lock:
                    pass
                continue
            if rng.random() < 0.01:
                with self.arena_lock:
                    if self.arena is a:
                        a.free()
                        self.arena = self.pyarena.Arena(chunk_size=1 << 20, heap=self.heap)
                        self.arenas_freed += 1
            return v, True, "arena"
        raise AssertionError("no arena value in 100 tries")

    # -- the threads ---------------------------------------------------------

    def fill(self, tid, seq, v):
        lo, n = _range(v)
        if n:
            ctypes.memmove(lo, self.patterns[tid].get(seq, n), n)
            if SABOTAGE and seq == 500 and tid == 1:
                # The safety net's own test: a byte written where it should
                # not be must be found by whoever checks the value.
                ctypes.memset(lo + n - 1, ctypes.string_at(lo + n - 1, 1)[0] ^ 0xFF, 1)

    def check(self, who, item):
        tid, seq, what, v = item
        lo, n = _range(v)
        if n and ctypes.string_at(lo, n) != self.patterns[tid].get(seq, n):
            got = ctypes.string_at(lo, n)
            want = self.patterns[tid].get(seq, n)
            i = next(i for i in range(n) if got[i] != want[i])
            raise AssertionError(f"t{who}: {what} #{seq} of t{tid} at {lo:#x} ({n} bytes) "
                                 f"corrupted at offset {i}")
        self.got[who] += 1
        if tid != who:
            self.foreign[who] += 1

    def drop(self, who, item):
        """Unregister a value; the caller then lets go of it."""
        lo, n = _range(item[3])
        self.reg.remove(lo, n)
        self.dropped[who] += 1

    def worker(self, tid):
        rng = random.Random(self.seed * 100 + tid)
        mine = self.inbox[tid]
        held = []
        done_senders = 0
        self.barrier.wait()
        kinds = KINDS if self.kind == "mixed" else (self.kind,)
        for seq in range(self.per_thread):
            kind = rng.choice(kinds)
            v, zero, what = self.make(kind, rng)
            lo, n = _range(v)
            if zero and n and ctypes.string_at(lo, n).count(0) != n:
                raise AssertionError(f"t{tid}: {what} of {n} bytes at {lo:#x} does not read "
                                     "zero")
            self.zero_checked[tid] += zero and n > 0
            self.reg.add(lo, n, f"{what} #{seq} of t{tid}")
            self.fill(tid, seq, v)
            self.made[tid] += 1
            self.kinds_made[what] = self.kinds_made.get(what, 0) + 1
            item = (tid, seq, what, v)
            v = None
            r = rng.random()
            if r < 0.02:
                with self.survivor_lock:
                    self.survivors.append(item)
            elif r < 0.30:
                held.append(item)
            else:
                self.inbox[rng.randrange(NTHREADS)].put(item)
            item = None
            if len(held) > 40:
                rng.shuffle(held)
                for it in held[:20]:
                    self.check(tid, it)
                    self.inbox[rng.randrange(NTHREADS)].put(it)
                del held[:20]
                it = None
            # Drain what has arrived.
            while True:
                try:
                    got = mine.get_nowait()
                except queue.Empty:
                    break
                if got is None:
                    done_senders += 1
                else:
                    self.check(tid, got)
                    self.drop(tid, got)
                got = None
        for it in held:
            self.check(tid, it)
            self.drop(tid, it)
        held.clear()
        it = None
        for q in self.inbox:
            q.put(None)
        while done_senders < NTHREADS:
            got = mine.get(timeout=120)
            if got is None:
                done_senders += 1
            else:
                self.check(tid, got)
                self.drop(tid, got)
            got = None

    def run(self):
        # The first error is the one to read: once a thread has failed, its
        # values die unregistered, and the others may report what follows.
        def wrap(tid):
            try:
                self.worker(tid)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                import traceback
                self.errors.append(f"t{tid}: {traceback.format_exc()}")
                # Let the others finish: they wait for everyone's end marker.
                for q in self.inbox:
                    q.put(None)
                raise exc

        t0 = time.monotonic()
        threads = [threading.Thread(target=wrap, args=(t,), name=f"t{t}")
                   for t in range(NTHREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
            assert not t.is_alive(), f"{t.name} hung"
        if self.errors:
            raise AssertionError(self.errors[0])
        return time.monotonic() - t0

    def after(self, elapsed):
        """The checks once every thread has ended."""
        import fuzz_driver
        from pyarena import _testing

        gc.collect()
        h = self.heap
        # Survivors: intact and disjoint (they are still registered).
        starts = sorted(_range(it[3]) for it in self.survivors)
        for (a0, n0), (a1, n1) in zip(starts, starts[1:]):
            assert n0 == 0 or a0 + n0 <= a1, f"survivors overlap at {a0:#x} and {a1:#x}"
        for it in self.survivors:
            self.check(it[0], it)
        assert len(self.reg.starts) == sum(1 for it in self.survivors if _range(it[3])[1]), \
            "registered ranges other than the survivors': a value was lost or not dropped"
        s = h.stats()
        fuzz_driver.check_stats(s, "after the threads")
        _testing.check_heap(h)
        assert _testing.num_caches(h) == 0, "the ended threads' caches were not given back"
        total = sum(self.made)
        assert sum(self.dropped) + len(self.survivors) == total, \
            (sum(self.dropped), len(self.survivors), total)
        if self.kind in ("block", "array", "typed", "numpy"):
            assert s.mallocs >= total, (s.mallocs, total)
        live_after = s.heap_objects
        # Everything dropped: the heap holds nothing.
        for it in self.survivors:
            self.drop(0, it)
        self.survivors.clear()
        it = None
        self.arena.free()
        self.arena = None
        gc.collect()
        h.release()
        s2 = h.stats()
        fuzz_driver.check_stats(s2, "after everything was dropped")
        assert s2.heap_objects == 0, f"{s2.heap_objects} objects left after everything died"
        _testing.check_heap(h)
        return dict(kind=self.kind, made=total, received=sum(self.got),
                    foreign=self.foreign, zero_checked=sum(self.zero_checked),
                    overlap_checks=self.reg.checked, kinds=self.kinds_made,
                    arenas_freed=self.arenas_freed, live_at_end=live_after,
                    seconds=round(elapsed, 2), frees=s2.frees)


def child_main(kind, scale, seed):
    sys.path.insert(0, HERE)
    import fuzz_driver

    fuzz_driver._warm()        # NumPy's lazy caches, not on our heap
    sys.setswitchinterval(0.0002)   # switch threads often, mid-method too
    s = Stress(kind, scale, seed)
    elapsed = s.run()
    print(json.dumps(s.after(elapsed)))


# ---------------------------------------------------------------------------
# The tests (in pytest).

SCALE = float(os.environ.get("PYARENA_STRESS_SCALE", "1"))


def run_child(kind, scale=SCALE, seed=1, sabotage=False, expect_ok=True):
    env = dict(os.environ)
    env["PYARENA_STRESS_SABOTAGE"] = "1" if sabotage else "0"
    env["PYTHONPATH"] = os.pathsep.join([HERE] + [p for p in sys.path if p])
    env["PYTHONFAULTHANDLER"] = "1"
    env["OPENBLAS_NUM_THREADS"] = "1"
    r = subprocess.run([sys.executable, os.path.abspath(__file__), kind, str(scale), str(seed)],
                       env=env, capture_output=True, text=True, timeout=600)
    if not expect_ok:
        return r
    assert r.returncode == 0, (
        f"stress scenario {kind!r} failed (exit {r.returncode}); reproduce with\n"
        f"  PYTHONPATH=src:tests python tests/test_stress.py {kind} {scale} {seed}\n"
        f"{r.stdout[-3000:]}{r.stderr[-6000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", KINDS)
def test_stress_one_kind(kind):
    """Four threads, one kind of value, passed around and checked."""
    out = run_child(kind, SCALE * 0.45)
    assert out["received"] > 0 and all(f > 0 for f in out["foreign"]), out
    assert out["overlap_checks"] > 0.9 * out["made"], out
    if kind in ("typed", "arena"):
        assert out["zero_checked"] > 0.9 * out["made"], out
    if kind == "arena":
        assert out["arenas_freed"] >= 1, out


def test_stress_mixed():
    """Every kind at once, values of one kind freed while others are made."""
    out = run_child("mixed", SCALE * 1.2, seed=2)
    made = set(out["kinds"])
    want = {"Block", "zeros", "empty", "full", "new", "newarray", "new dtype",
            "newarray dtype", "arena", "np.zeros", "np.ones * 2", "np.arange"}
    assert want <= made, want - made
    assert all(f > 0 for f in out["foreign"]), out


def test_stress_catches_a_corrupted_value():
    """The net is real: one byte changed in one value of one thread makes
    the scenario fail, naming the value."""
    r = run_child("block", 0.1, sabotage=True, expect_ok=False)
    assert r.returncode != 0
    assert "#500 of t1" in r.stderr and "corrupted at offset" in r.stderr, r.stderr[-2000:]


def test_registry_refuses_overlaps():
    reg = Registry()
    reg.add(1000, 100, "a")
    reg.add(1100, 10, "b")          # touching is not overlapping
    reg.add(900, 100, "c")
    for lo, n in ((1050, 10), (990, 20), (1109, 5), (800, 1000), (1000, 1)):
        with pytest.raises(AssertionError, match="overlaps|already live"):
            reg.add(lo, n, "x")
    reg.remove(1000, 100)
    reg.add(1050, 10, "d")          # free now
    with pytest.raises(AssertionError):
        reg.remove(1000, 100)


if __name__ == "__main__":
    child_main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))
