"""Heap profiles of real heaps (_mprof): what the allocator samples, the
stacks it records, the estimates a profile gives, frees, threads, the
C-level API, NumPy's handler, tracemalloc. The model and the pprof encoding
on their own are tested in test_pprof.py.

Allocating code runs in a fresh thread (in_thread) so that its stacks are
a few frames deep: under pytest they would be deeper than the 32 frames a
sample keeps, and the site's line would be the same either way, but a
truncated stack is tested on its own.
"""

import ctypes
import gc
import io
import os
import re
import shutil
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import pyarena
from pyarena import _pprof, _testing
from pyarena._pprof import STACK_MAX, TRUNCATED_FRAME

import pprof_decode
from support import pyarena_env

KiB = 1024
HERE = Path(__file__).resolve()
# Line numbers of the "# site: NAME" markers below, read from this file,
# so that the expected lines are the ones the allocations are on.
SITES = {m.group(1): i + 1 for i, line in enumerate(HERE.read_text().splitlines())
         for m in [re.search(r"# site: (\w+)$", line)] if m}


def in_thread(fn, *args):
    out = {}

    def run():
        try:
            out["r"] = fn(*args)
        except BaseException as e:    # re-raised in the caller
            out["e"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "e" in out:
        raise out["e"]
    return out.get("r")


def site(profile, name):
    """The samples whose innermost frame is the line of site name."""
    return [s for s in profile.samples
            if s.stack and s.stack[0].filename == str(HERE) and s.stack[0].lineno == SITES[name]]


def one(profile, name):
    got = site(profile, name)
    assert len(got) == 1, (name, got)
    return got[0]


def site_alloc(heap, n, size):
    out = []
    for _ in range(n):
        out.append(heap.alloc(size))  # site: alloc
    return out


def site_zeros(heap, n, count):
    out = []
    for _ in range(n):
        out.append(heap.zeros(count))  # site: zeros
    return out


def site_large(heap, n, size):
    out = []
    for _ in range(n):
        out.append(heap.empty(size, dtype=np.uint8))  # site: large
    return out


def site_tiny(heap, n):
    out = []
    for _ in range(n):
        out.append(heap.alloc(4))  # site: tiny
    return out


def site_a(heap, n):
    out = []
    for _ in range(n):
        out.append(heap.zeros(512))  # site: a
    return out


def site_b(heap, n):
    out = []
    for _ in range(n):
        out.append(heap.zeros(512))  # site: b
    return out


# -- the samplers in C ------------------------------------------------------


def test_c_samplers_are_the_reference_samplers_to_the_bit():
    state = 0x0123456789ABCDEF
    ref = state
    for _ in range(2000):
        state, u = _testing.c_cheaprand(state)
        ref, v = _pprof.cheaprand(ref)
        assert (state, u) == (ref, v)
        for rate in (1, 2, 4096, 64 * KiB, 512 * KiB, 1 << 40):
            assert _testing.c_fastexprand(rate, u) == _pprof.fastexprand(rate, u)
            assert _testing.c_next_sample_nofp(rate, u) == _pprof.next_sample_nofp(rate, u)


@pytest.mark.parametrize("kind", ["exponential", "uniform"])
@pytest.mark.parametrize("rate", [4096, 64 * KiB, 512 * KiB])
def test_mean_sampling_interval_is_the_rate(kind, rate):
    h = pyarena.Heap(profile_rate=rate)
    _testing.set_sampler(h, kind, seed=12345)
    xs = np.array(_testing.sample_intervals(h, 200_000), dtype=np.float64)
    assert xs.min() >= 0
    # Standard error of the mean: rate/sqrt(n) for the exponential,
    # rate/sqrt(3n) for the uniform on [0, 2 rate); 1% is > 4 of them.
    assert abs(xs.mean() / rate - 1) < 0.01
    if kind == "uniform":
        assert xs.max() < 2 * rate
        assert abs(xs.std() / rate - 1 / np.sqrt(3)) < 0.01
    else:
        assert abs(xs.std() / rate - 1) < 0.02      # an exponential's sd is its mean
        assert (xs > 3 * rate).mean() == pytest.approx(np.exp(-3), abs=0.003)


def test_rates_0_and_1_draw_no_interval_and_every_allocation():
    h = pyarena.Heap(profile_rate=1)
    assert set(_testing.sample_intervals(h, 100)) == {0}
    h.profile_rate = 0
    # No sample ever: the countdown only comes back, after a GiB, to look
    # at the rate again.
    assert set(_testing.sample_intervals(h, 10)) == {1 << 30}


# -- rate, property, environment --------------------------------------------


def test_profiling_is_on_at_512_KiB_by_default():
    assert pyarena.Heap().profile_rate == 512 * KiB == pyarena.MEM_PROFILE_RATE
    assert pyarena.Heap(profile_rate=None).profile_rate == 512 * KiB
    assert pyarena.Heap(profile_rate=0).profile_rate == 0
    # A debug heap records every stack unless told otherwise.
    assert pyarena.Heap(debug=True).profile_rate == 1
    assert pyarena.Heap(debug=True, profile_rate=4096).profile_rate == 4096


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (1 << 63, ValueError), (1.5, TypeError),
                                      ("8", TypeError), (True, TypeError), (None, TypeError)])
def test_bad_profile_rates_are_refused_and_change_nothing(bad, exc):
    if bad is not None:         # None is the constructor's default: the heap's own rate
        with pytest.raises(exc):
            pyarena.Heap(profile_rate=bad)
    h = pyarena.Heap(profile_rate=4096)
    with pytest.raises(exc):
        h.profile_rate = bad
    assert h.profile_rate == 4096


def test_rate_0_records_nothing_and_a_new_rate_takes_at_the_next_allocation():
    h = pyarena.Heap(profile_rate=0)
    keep = in_thread(site_alloc, h, 50, 64)
    assert h.heap_profile().samples == ()
    h.profile_rate = 1
    keep += in_thread(site_alloc, h, 7, 64)
    s = one(h.heap_profile(), "alloc")
    assert (s.alloc_objects, s.inuse_objects) == (7, 7)
    h.profile_rate = 0
    keep += in_thread(site_alloc, h, 20, 64)
    assert one(h.heap_profile(), "alloc").alloc_objects == 7


def test_a_rate_change_reaches_a_thread_that_is_already_counting_down():
    # The thread's cache is armed at 1 GiB (no sample for a long time);
    # setting rate 1 from another thread must reach it at its next
    # allocation, not after a GiB.
    h = pyarena.Heap(profile_rate=1 << 30)
    go, armed, done = threading.Event(), threading.Event(), threading.Event()
    out = []

    def worker():
        out.extend(site_alloc(h, 3, 64))
        armed.set()
        go.wait()
        out.extend(site_alloc(h, 5, 64))
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    armed.wait()
    h.profile_rate = 1
    go.set()
    t.join()
    s = one(h.heap_profile(), "alloc")
    assert s.alloc_objects == 5


def run_env(value):
    env = pyarena_env(PYARENA_MEMPROFILERATE=value)
    return subprocess.run(
        [sys.executable, "-c", "import pyarena; print(pyarena.default_heap().profile_rate)"],
        env=env, capture_output=True, text=True)


@pytest.mark.parametrize("value, rate", [("1", 1), ("0", 0), ("65536", 65536),
                                         ("0x1000", 4096), (" ", 512 * KiB)])
def test_environment_sets_the_default_heaps_rate(value, rate):
    r = run_env(value)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == rate


@pytest.mark.parametrize("value", ["fast", "-5", "1.5"])
def test_a_bad_environment_rate_is_a_clear_error(value):
    r = run_env(value)
    assert r.returncode != 0
    assert "ValueError: PYARENA_MEMPROFILERATE" in r.stderr
    assert "Segmentation" not in r.stderr


# -- rate 1: exact ------------------------------------------------------------


def test_rate_1_counts_every_allocation_of_every_path_per_line():
    h = pyarena.Heap(profile_rate=1)
    small = in_thread(site_alloc, h, 5, 100)
    arrays = in_thread(site_zeros, h, 3, 1000)          # 8000 B each
    large = in_thread(site_large, h, 2, 100_000)        # a large object each
    p = h.heap_profile()
    assert p.rate == 1
    want = {"alloc": (5, small[0].slot_size),
            "zeros": (3, h.alloc(8000).slot_size),
            "large": (2, pyarena._testing.span_of(h, large[0].ctypes.data)["npages"] * 8192)}
    for name, (n, slot) in want.items():
        s = one(p, name)
        assert s.block_size == slot
        assert (s.alloc_objects, s.alloc_bytes) == (n, n * slot)
        assert (s.inuse_objects, s.inuse_bytes) == (n, n * slot)
        fn = {"alloc": "site_alloc", "zeros": "site_zeros", "large": "site_large"}[name]
        assert s.stack[0].function == fn
        assert [f.function for f in s.stack[1:3]] == ["in_thread.<locals>.run", "Thread.run"]
    # Frees are counted as they happen.
    del small[:2], arrays[0], large[:]
    p = h.heap_profile()
    assert (one(p, "alloc").alloc_objects, one(p, "alloc").inuse_objects) == (5, 3)
    assert (one(p, "zeros").alloc_objects, one(p, "zeros").inuse_objects) == (3, 2)
    assert one(p, "large").inuse_bytes == 0 and one(p, "large").alloc_objects == 2
    del small, arrays
    p = h.heap_profile()
    assert sum(s.inuse_bytes for s in p.samples) == 0
    assert sum(s.inuse_objects for s in p.samples) == 0


def test_rate_1_samples_each_new_tiny_block():
    # Go samples the 16-byte tiny block when it is made, not each object
    # packed into it: four 4-byte values are one block.
    h = pyarena.Heap(profile_rate=1)
    vals = in_thread(site_tiny, h, 8)
    s = one(h.heap_profile(), "tiny")
    assert s.block_size == 16
    assert s.alloc_objects == 2
    del vals
    assert one(h.heap_profile(), "tiny").inuse_objects == 0


def test_a_sampled_object_freed_by_another_thread_leaves_in_use():
    h = pyarena.Heap(profile_rate=1)
    keep = in_thread(site_alloc, h, 10, 256) + in_thread(site_large, h, 2, 200_000)
    assert one(h.heap_profile(), "alloc").inuse_objects == 10
    del keep              # freed here, by the main thread: remote frees
    p = h.heap_profile()
    assert one(p, "alloc").inuse_objects == 0 and one(p, "large").inuse_objects == 0
    assert h.check() == 0        # and no live object left


def test_a_span_gives_up_local_frees_while_it_holds_samples():
    # A sample takes its span's owner off the local free path (the free
    # must find the sample); the owner's free of the last sample puts it
    # back, so a loop that samples once does not pay on every later free.
    h = pyarena.Heap(profile_rate=0)
    a = h.alloc(64)
    span = _testing.span_of(h, a.address)
    assert span["owned"] and span["nsampled"] == 0
    h.profile_rate = 1
    b, c = h.alloc(64), h.alloc(64)
    assert _testing.span_of(h, b.address)["start"] == span["start"]
    span = _testing.span_of(h, b.address)
    assert not span["owned"] and span["nsampled"] == 2
    h.profile_rate = 0
    del b
    assert _testing.span_of(h, a.address)["nsampled"] == 1
    assert not _testing.span_of(h, a.address)["owned"]
    del c
    span = _testing.span_of(h, a.address)
    assert span["owned"] and span["nsampled"] == 0
    # Freed by another thread instead: the samples go, the owner is not
    # given back by a thread that does not own the span.
    h.profile_rate = 1
    d = h.alloc(64)
    h.profile_rate = 0
    box = [d]
    del d
    in_thread(box.clear)
    span = _testing.span_of(h, a.address)
    assert span["nsampled"] == 0 and not span["owned"]
    del a


def test_the_same_slot_sampled_again_after_its_free_is_a_new_sample():
    h = pyarena.Heap(profile_rate=1)

    def churn():
        for _ in range(100):
            b = h.alloc(48)  # site: churn
            del b

    in_thread(churn)
    s = one(h.heap_profile(), "churn")
    assert (s.alloc_objects, s.inuse_objects) == (100, 0)


def test_a_deep_stack_keeps_its_innermost_frames_and_is_marked():
    h = pyarena.Heap(profile_rate=1)

    def down(k):
        if k == 0:
            return h.alloc(64)  # site: deep
        return down(k - 1)

    keep = in_thread(down, 50)
    s = one(h.heap_profile(), "deep")
    assert s.truncated
    assert len(s.stack) == STACK_MAX + 1 and s.stack[-1] == TRUNCATED_FRAME
    assert all(f.function == "test_a_deep_stack_keeps_its_innermost_frames_and_is_marked."
               "<locals>.down" for f in s.stack[:STACK_MAX])
    shallow = in_thread(site_alloc, h, 1, 64)
    assert not one(h.heap_profile(), "alloc").truncated
    del keep, shallow


# -- estimates ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["exponential", "uniform"])
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_64_KiB_rate_estimates_one_line_within_10_percent(kind, seed):
    h = pyarena.Heap(profile_rate=64 * KiB)

    def work():
        _testing.set_sampler(h, kind, seed=seed)
        return site_a(h, 10_000)           # 4 KiB each

    keep = in_thread(work)
    s = one(h.heap_profile(), "a")
    true = 10_000 * 4096
    assert s.block_size == 4096
    assert abs(s.alloc_bytes / true - 1) < 0.10, s
    assert abs(s.alloc_objects / 10_000 - 1) < 0.10, s
    assert s.inuse_bytes == s.alloc_bytes
    del keep
    s = one(h.heap_profile(), "a")
    assert (s.inuse_objects, s.inuse_bytes) == (0, 0)
    assert abs(s.alloc_bytes / true - 1) < 0.10


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_two_sites_allocating_3_to_1_are_estimated_3_to_1_within_15_percent(seed):
    h = pyarena.Heap(profile_rate=64 * KiB)

    def work():
        _testing.set_sampler(h, "exponential", seed=seed)
        keep = []
        for _ in range(5000):
            keep += site_a(h, 3)
            keep += site_b(h, 1)
        return keep

    keep = in_thread(work)
    p = h.heap_profile()
    a, b = one(p, "a"), one(p, "b")
    assert abs((a.alloc_bytes / b.alloc_bytes) / 3 - 1) < 0.15, (a, b)
    assert abs((a.inuse_bytes / b.inuse_bytes) / 3 - 1) < 0.15
    del keep


def test_threads_sample_independently():
    # Each thread's cache has its own countdown and random source: seeded
    # alike, a thread samples the same allocations alone as beside a busy
    # other thread, and its samples carry its own stack.
    def run(heap, seed, fn, barrier=None):
        def work():
            _testing.set_sampler(heap, "exponential", seed=seed)
            if barrier is not None:
                barrier.wait()
            return fn(heap, 4000)
        return work

    alone = {}
    for name, fn, seed in (("a", site_a, 5), ("b", site_b, 6)):
        h = pyarena.Heap(profile_rate=64 * KiB)
        keep = in_thread(run(h, seed, fn))
        alone[name] = one(h.heap_profile(), name)
        del keep
    h = pyarena.Heap(profile_rate=64 * KiB)
    barrier = threading.Barrier(2)
    results = {}
    threads = [threading.Thread(target=lambda n=n, f=f, s=s: results.__setitem__(
        n, run(h, s, f, barrier)())) for n, f, s in (("a", site_a, 5), ("b", site_b, 6))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p = h.heap_profile()
    for name in ("a", "b"):
        s = one(p, name)
        assert (s.alloc_objects, s.alloc_bytes) == (alone[name].alloc_objects,
                                                    alone[name].alloc_bytes)
        assert s.stack[0].function == f"site_{name}"
    assert alone["a"].alloc_objects != alone["b"].alloc_objects or \
        alone["a"] != alone["b"]
    del results


# -- C-level callers, NumPy's handler ---------------------------------------


def test_c_level_allocations_without_the_gil_are_sampled_under_one_api_frame():
    h = pyarena.Heap(profile_rate=1)
    addrs = _testing.capi_malloc(h, 200, 40, nogil=True)
    assert all(addrs)
    p = h.heap_profile()
    api = [s for s in p.samples if len(s.stack) == 1 and "C-level API" in s.stack[0].function]
    assert len(api) == 1
    assert (api[0].alloc_objects, api[0].block_size) == (40, 208)
    _testing.capi_free(h, addrs[:30])
    api = [s for s in h.heap_profile().samples if "C-level API" in s.stack[0].function]
    assert api[0].inuse_objects == 10
    _testing.capi_free(h, addrs[30:])
    api = [s for s in h.heap_profile().samples if "C-level API" in s.stack[0].function]
    assert api[0].inuse_objects == 0


def test_c_level_allocations_with_the_gil_name_the_python_caller():
    h = pyarena.Heap(profile_rate=1)

    def call():
        return _testing.capi_malloc(h, 64, 3, nogil=False)  # site: capi

    addrs = in_thread(call)
    assert one(h.heap_profile(), "capi").alloc_objects == 3
    _testing.capi_free(h, addrs)
    assert one(h.heap_profile(), "capi").inuse_objects == 0


def test_numpy_temporaries_are_attributed_to_the_line_that_made_them():
    h = pyarena.Heap(profile_rate=1)

    def numeric():
        x = np.arange(4096, dtype=np.float64)
        with pyarena.numpy_allocator(h):
            y = x * 2.0 + 1.0  # site: numpy
            z = np.sqrt(y)  # site: numpy2
        return y, z

    y, z = in_thread(numeric)
    nbytes = y.nbytes

    def big(p, name):
        # NumPy also puts each Python float it converts into a 0-d array,
        # through the handler: 8-byte data, a sample of its own.
        got = [s for s in site(p, name) if s.block_size >= nbytes]
        assert len(got) == 1
        return got[0]

    p = h.heap_profile()
    s = big(p, "numpy")
    # x * 2.0 and (x * 2.0) + 1.0: one temporary freed, the result kept.
    assert (s.alloc_objects, s.inuse_objects) == (2, 1)
    assert s.stack[0].function == "test_numpy_temporaries_are_attributed_to_the_line_that_made_them.<locals>.numeric"
    assert big(p, "numpy2").inuse_objects == 1
    assert all(s.block_size == 16 and s.inuse_objects == 0
               for s in site(p, "numpy") if s.block_size < nbytes)
    del y, z
    assert big(h.heap_profile(), "numpy").inuse_objects == 0


def test_numpy_realloc_counts_the_free_of_the_old_and_samples_the_new():
    h = pyarena.Heap(profile_rate=1)

    def grow():
        with pyarena.numpy_allocator(h):
            a = np.zeros(1000)  # site: before
            a.resize(5000, refcheck=False)  # site: resized
        return a

    a = in_thread(grow)
    p = h.heap_profile()
    assert one(p, "before").inuse_objects == 0
    assert one(p, "before").alloc_objects == 1
    assert one(p, "resized").inuse_objects == 1
    assert one(p, "resized").block_size >= 40000
    del a


# -- the snapshot and its outputs ---------------------------------------------


def test_a_real_profile_decodes_back_from_pprof():
    h = pyarena.Heap(profile_rate=1)
    keep = in_thread(site_alloc, h, 4, 64) + in_thread(site_zeros, h, 2, 100)
    p = h.heap_profile()
    buf = io.BytesIO()
    p.write_pprof(buf)
    d = pprof_decode.decode(buf.getvalue())
    assert d.period == 1
    got = {tuple(map(tuple, frames)): (values, labels) for frames, values, labels in d.stacks()}
    assert len(got) == len(p.samples)
    for s in p.samples:
        values, labels = got[tuple(tuple(f) for f in s.stack)]
        assert values == [s.alloc_objects, s.alloc_bytes, s.inuse_objects, s.inuse_bytes]
        assert labels == {"bytes": s.block_size}
    funcs = {d.s(f.name): f for f in d.functions}
    assert funcs["site_alloc"].start_line == site_alloc.__code__.co_firstlineno
    assert d.s(funcs["site_alloc"].filename) == str(HERE)
    del keep


def test_top_and_folded_name_the_sites():
    h = pyarena.Heap(profile_rate=1)
    keep = in_thread(site_large, h, 3, 300_000) + in_thread(site_alloc, h, 2, 64)
    p = h.heap_profile()
    top = p.top(5)
    first = [ln for ln in top.splitlines() if "site_" in ln][0]
    assert "site_large" in first and f":{SITES['large']}" in first
    folded = p.folded()
    line = [ln for ln in folded.splitlines() if "site_large" in ln][0]
    stack, value = line.rsplit(" ", 1)
    assert stack.split(";")[-1].startswith("site_large")
    assert int(value) == one(p, "large").inuse_bytes
    del keep


def test_a_snapshot_is_not_changed_by_later_allocations():
    h = pyarena.Heap(profile_rate=1)
    keep = in_thread(site_alloc, h, 3, 64)
    p = h.heap_profile()
    keep += in_thread(site_alloc, h, 3, 64)
    assert one(p, "alloc").alloc_objects == 3
    assert one(h.heap_profile(), "alloc").alloc_objects == 6
    del keep


def test_a_closed_heap_still_profiles_its_live_objects_and_a_gone_one_is_empty():
    h = pyarena.Heap(profile_rate=1)
    keep = in_thread(site_alloc, h, 3, 64)
    h.close()
    assert one(h.heap_profile(), "alloc").inuse_objects == 3
    del keep
    gc.collect()
    p = h.heap_profile()
    assert all(s.inuse_objects == 0 for s in p.samples)


def test_profiles_of_two_heaps_are_apart():
    h1, h2 = pyarena.Heap(profile_rate=1), pyarena.Heap(profile_rate=1)
    keep = in_thread(site_alloc, h1, 2, 64) + in_thread(site_zeros, h2, 3, 10)
    assert site(h1.heap_profile(), "zeros") == [] and site(h2.heap_profile(), "alloc") == []
    assert one(h1.heap_profile(), "alloc").alloc_objects == 2
    assert one(h2.heap_profile(), "zeros").alloc_objects == 3
    del keep


def test_sampled_spans_stay_consistent_under_threads():
    # Sampling clears a span's owner so its frees go out of line; threads
    # allocating and freeing across each other at rate 1 must leave every
    # count right and the heap consistent.
    h = pyarena.Heap(profile_rate=1)
    handoff = []
    lock = threading.Lock()

    def worker(k):
        mine = []
        for i in range(3000):
            b = h.alloc(32 + 16 * (i % 8))  # site: stress
            if i % 3 == 0:
                with lock:
                    handoff.append(b)
            else:
                mine.append(b)
            if len(mine) > 50:
                del mine[:25]
            if i % 7 == 0:
                with lock:
                    if handoff:
                        handoff.pop(0)
        return len(mine)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p = h.heap_profile()
    ss = site(p, "stress")
    assert sum(s.alloc_objects for s in ss) == 9000
    assert sum(s.inuse_objects for s in ss) == len(handoff)
    handoff.clear()
    assert sum(s.inuse_objects for s in site(h.heap_profile(), "stress")) == 0
    assert h.check() == 0


# -- tracemalloc ----------------------------------------------------------------


@pytest.fixture
def traced():
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def traced_bytes(domain):
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, domain)])
    return sum(t.size for t in snap.traces)


NP = np.lib.tracemalloc_domain if hasattr(np.lib, "tracemalloc_domain") else 389047


def test_tracemalloc_sees_arrays_in_numpys_domain(traced):
    h = pyarena.Heap()
    before = traced_bytes(NP)
    a = h.zeros(1000)               # the fast path: 1-d, small
    b = h.zeros(1000 * 1000)        # a large object
    c = h.full((10, 10), 3.0)
    d = h.empty_like(a)
    e = h.zeros(5)                  # through the C function's fast path
    f = h.newarray(np.int32, 10)
    assert traced_bytes(NP) - before == 8000 + 8_000_000 + 800 + 8000 + 40 + 40
    assert traced_bytes(pyarena.tracemalloc_domain) == 0
    del a, b, c, d, e, f
    assert traced_bytes(NP) == before


def test_tracemalloc_sees_blocks_values_and_arena_chunks_in_pyarenas_domain(traced):
    h = pyarena.Heap()
    blk = h.alloc(100)
    val = h.new(ctypes.c_double * 4)
    arr = h.newarray(ctypes.c_int32, 10)
    z = h.alloc(0)
    assert traced_bytes(pyarena.tracemalloc_domain) == 100 + 32 + 40
    ar = pyarena.Arena(chunk_size=1 << 20, heap=h)
    x = ar.zeros(100)                 # in the chunk: the chunk is traced, not x
    y = ar.alloc(64)
    assert traced_bytes(pyarena.tracemalloc_domain) == 100 + 32 + 40 + (1 << 20)
    big = ar.zeros(1 << 20)           # over a quarter chunk: the heap's, an array
    assert traced_bytes(NP) >= 8 << 20
    del x, y, big
    ar.free()
    del ar
    gc.collect()
    assert traced_bytes(pyarena.tracemalloc_domain) == 100 + 32 + 40
    del blk, val, arr, z
    assert traced_bytes(pyarena.tracemalloc_domain) == 0


def test_tracemalloc_counts_handler_arrays_once(traced):
    h = pyarena.Heap()
    before = traced_bytes(NP)
    with pyarena.numpy_allocator(h):
        a = np.ones(10_000)
        b = a + 1
    assert traced_bytes(NP) - before == 2 * 80_000
    assert traced_bytes(pyarena.tracemalloc_domain) == 0
    del a, b
    assert traced_bytes(NP) == before


def test_tracemalloc_attributes_arrays_to_their_line(traced):
    h = pyarena.Heap()
    a = h.zeros(50_000)  # site: traced
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, NP)])
    stats = snap.statistics("lineno")
    top = [s for s in stats if s.traceback[0].filename == str(HERE)]
    assert top[0].traceback[0].lineno == SITES["traced"]
    assert top[0].size == 400_000
    del a


# -- python -m pyarena profile --------------------------------------------------

SCRIPT = """\
import sys
import numpy as np

def make(n):
    x = np.linspace(0.0, 1.0, n)
    y = x * 2.0 + 1.0           # LINE_TEMP
    return np.sqrt(y)           # LINE_KEEP

keep = [make(100_000) for _ in range(10)]
print("args", sys.argv[1:], __name__)
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
"""


def script_lines(text):
    return {m: i + 1 for i, line in enumerate(text.splitlines())
            for m in ("LINE_TEMP", "LINE_KEEP") if m in line}


def run_cli(tmp_path, *args, script=SCRIPT):
    path = tmp_path / "numeric.py"
    path.write_text(script)
    r = subprocess.run([sys.executable, "-m", "pyarena", "profile", *args, str(path)]
                       if "-m" not in args else [sys.executable, "-m", "pyarena", "profile", *args],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120, env=pyarena_env())
    return path, r


def test_the_cli_profiles_a_numpy_script_and_names_its_lines(tmp_path):
    out = tmp_path / "h.pb.gz"
    folded = tmp_path / "h.folded"
    path, r = run_cli(tmp_path, "-o", str(out), "--rate", "1", "--folded", str(folded))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "args [] __main__\n"           # the script's own output, untouched
    lines = script_lines(SCRIPT)
    d = pprof_decode.decode(out.read_bytes())
    assert d.period == 1
    stacks = d.stacks()
    by_line = {}
    for frames, values, labels in stacks:
        # The arrays (800 KB); NumPy's 0-d arrays for 2.0 and 1.0 aside.
        if frames and frames[0][0] == str(path) and frames[0][1] == "make" and \
                labels["bytes"] >= 800_000:
            v = by_line.setdefault(frames[0][2], [0, 0, 0, 0])
            for i in range(4):
                v[i] += values[i]
        # The command line's own frames are taken off: the outermost frame
        # of a stack from the script is the script's module.
        if any(f[0] == str(path) for f in frames):
            assert frames[-1][:2] == (str(path), "<module>"), frames
            assert not any("pyarena" in f[0] and "__main__" in f[0] for f in frames)
    # Line TEMP: one array of 800 KB a call (NumPy adds 1.0 into the
    # temporary x * 2.0 in place: its elision of large temporaries), all
    # freed; line KEEP: 10, all kept. NumPy elides only when its look at
    # the C stack allows: with a sanitizer's runtime preloaded it does not,
    # and each call makes two.
    temp, kept = by_line[lines["LINE_TEMP"]], by_line[lines["LINE_KEEP"]]
    assert temp[0] in (10, 20) and temp[2] == 0
    assert kept[0] == 10 and kept[2] == 10 and kept[3] >= 10 * 800_000
    assert f"numeric.py:{lines['LINE_KEEP']}" in r.stderr
    assert "In use when the script ended" in r.stderr and "Allocated over the run" in r.stderr
    text = folded.read_text()
    keep_line = [ln for ln in text.splitlines() if f"numeric.py:{lines['LINE_KEEP']})" in ln]
    assert len(keep_line) == 1 and keep_line[0].startswith("<module> (")
    assert int(keep_line[0].rsplit(" ", 1)[1]) == kept[3]


def test_the_cli_keeps_the_scripts_exit_status_and_still_writes_the_profile(tmp_path):
    out = tmp_path / "h.pb.gz"
    path, r = run_cli(tmp_path, "-o", str(out), "--rate", "1")
    assert r.returncode == 0
    path = tmp_path / "numeric.py"
    r = subprocess.run([sys.executable, "-m", "pyarena", "profile", "-o", str(out), str(path), "3"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120, env=pyarena_env())
    assert r.returncode == 3 and r.stdout == "args ['3'] __main__\n"
    assert out.exists()
    failing = SCRIPT.replace("print(", "raise RuntimeError('boom'); print(")
    out.unlink()
    path, r = run_cli(tmp_path, "-o", str(out), script=failing)
    assert r.returncode == 1
    assert "RuntimeError: boom" in r.stderr
    assert pprof_decode.decode(out.read_bytes()).samples


def test_the_cli_runs_a_module_with_m(tmp_path):
    (tmp_path / "numericmod.py").write_text(SCRIPT)
    out = tmp_path / "m.pb.gz"
    r = subprocess.run([sys.executable, "-m", "pyarena", "profile", "-o", str(out), "--rate", "1",
                        "-m", "numericmod", "0"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120, env=pyarena_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout == "args ['0'] __main__\n"
    d = pprof_decode.decode(out.read_bytes())
    assert any(f[0].endswith("numericmod.py") for frames, _, _ in d.stacks() for f in frames)


def test_the_cli_refuses_a_bad_rate_and_a_missing_script(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pyarena", "profile", "--rate", "-1", "x.py"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60, env=pyarena_env())
    assert r.returncode == 2 and "--rate" in r.stderr
    r = subprocess.run([sys.executable, "-m", "pyarena", "profile", "missing.py"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60, env=pyarena_env())
    assert r.returncode == 2 and "no such script" in r.stderr
    assert not (tmp_path / "heap.pb.gz").exists()


@pytest.mark.skipif(shutil.which("go") is None, reason="go tool pprof is not installed")
def test_go_tool_pprof_reads_the_cli_profile(tmp_path):
    # A check against the real reader, where Debian's golang-go is present;
    # the decoding tests above stand without it.
    out = tmp_path / "h.pb.gz"
    path, r = run_cli(tmp_path, "-o", str(out), "--rate", "1")
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["go", "tool", "pprof", "-top", "-sample_index=alloc_space", str(out)],
                       capture_output=True, text=True, timeout=120,
                       env=pyarena_env(HOME=str(tmp_path), PPROF_TMPDIR=str(tmp_path)))
    assert r.returncode == 0, r.stderr
    assert "Type: alloc_space" in r.stdout
    rows = [ln.split() for ln in r.stdout.splitlines() if ln.strip().endswith(" make")]
    assert rows and rows[0][-1] == "make"
