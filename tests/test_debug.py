"""Debug heaps (_mdebug): redzones sized by Go's computeRZlog, the fresh
and freed patterns, reports of overflows, writes after free and bad frees
(warned, counted, raised through the Python API), check() of every
redzone and freed slot, and the release heap unchanged.

Damage is done at exact offsets the way C or Cython code overruns a buffer,
through _testing.poke (ctypes.memset itself would be stopped by
AddressSanitizer in an ASAN build, which test_sanitize.py shows); every test that damages a heap takes its findings
(check() or the allocation that raises), so the conftest's check of every
heap after each test sees a clean one.
"""

import gc
import re
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

import pyarena
from pyarena import HeapCorruptionError, HeapCorruptionWarning, _testing
from support import pyarena_env

# Go's computeRZlog (malloc.go): the largest size of each redzone size.
GO_RZ = [(48, 16), (96, 32), (448, 64), (3968, 128), (16128, 256), (32256, 512),
         (64512, 1024)]


def test_redzone_size_is_gos_table_at_every_boundary():
    assert pyarena.redzone_size(0) == pyarena.redzone_size(1) == 16
    prev = 0
    for last, rz in GO_RZ:
        assert pyarena.redzone_size(prev + 1) == rz
        assert pyarena.redzone_size(last) == rz
        assert pyarena.redzone_size(last + 1) == (rz * 2)
        prev = last
    assert pyarena.redzone_size(1 << 40) == 2048
    assert pyarena.redzone_size(1 << 100) == 2048


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (1.0, TypeError), ("8", TypeError),
                                      (True, TypeError), (None, TypeError)])
def test_redzone_size_refuses_bad_sizes(bad, exc):
    with pytest.raises(exc):
        pyarena.redzone_size(bad)


# -- the heap ------------------------------------------------------------------


def test_debug_is_chosen_when_the_heap_is_made():
    assert not pyarena.Heap().debug
    h = pyarena.Heap(debug=True)
    assert h.debug and h.profile_rate == 1
    b = h.alloc(10)
    with pytest.raises(ValueError, match="debug is chosen"):
        h.__init__(debug=False)
    assert h.debug
    del b
    for bad in ("yes", 2, None, 1.0):
        with pytest.raises(TypeError):
            pyarena.Heap(debug=bad)
    assert pyarena.Heap(debug=1).debug and not pyarena.Heap(debug=0).debug


@pytest.mark.parametrize("n", [1, 15, 16, 48, 49, 100, 448, 1000, 3968, 5000, 32256, 40000,
                               100_000, 1 << 20])
def test_every_allocation_has_a_redzone_in_its_slot(n):
    h = pyarena.Heap(debug=True)
    b = h.alloc(n, zero=False)
    assert b.slot_size >= n + pyarena.redzone_size(n)
    # The slot a release heap gives the object and its redzone together.
    assert b.slot_size == pyarena.Heap().alloc(n + pyarena.redzone_size(n)).slot_size
    # Fresh memory shows 0xCD; the redzone holds the canary 0xFD up to the
    # size word in the slot's last 8 bytes.
    raw = _testing.peek(b.address, b.slot_size)
    assert raw[:n] == b"\xcd" * n
    assert raw[n:b.slot_size - 8] == b"\xfd" * (b.slot_size - 8 - n)
    z = h.alloc(n)
    assert bytes(z) == bytes(n)
    assert h.check() == 2


def test_release_heaps_have_no_redzone_and_no_pattern():
    h = pyarena.Heap()
    assert h.alloc(100).slot_size == 112 and h.alloc(16).slot_size == 16
    d = pyarena.Heap(debug=True)
    assert d.alloc(100).slot_size == 176           # 100 + 64 of redzone: class 176
    assert d.alloc(8).size_class != 2              # no tiny values on a debug heap


def test_empty_and_c_level_malloc_show_the_fresh_pattern_zeros_and_calloc_do_not():
    h = pyarena.Heap(debug=True)
    e = h.empty(100, dtype=np.uint8)
    assert (e == 0xCD).all()
    assert (h.empty(3, dtype=np.uint32) == 0xCDCDCDCD).all()
    assert (h.zeros(100) == 0).all() and (h.full(5, 7) == 7).all()
    [p] = _testing.capi_malloc(h, 40, 1)
    assert _testing.peek(p, 40) == b"\xcd" * 40
    with pyarena.numpy_allocator(h):
        a = np.empty(64, dtype=np.uint8)
        z = np.zeros(64, dtype=np.uint8)
    assert (a == 0xCD).all() and (z == 0).all()
    _testing.capi_free(h, [p])


def test_freed_memory_holds_the_freed_pattern():
    h = pyarena.Heap(debug=True)
    keep = h.alloc(100)        # the span stays in use
    b = h.alloc(100)
    a, slot = b.address, b.slot_size
    del b
    assert _testing.peek(a, slot) == b"\xdd" * slot
    del keep


def test_usable_size_and_realloc_stop_at_the_redzone():
    h = pyarena.Heap(debug=True)
    with pyarena.numpy_allocator(h):
        a = np.arange(1000, dtype=np.uint8)
        a.resize(3000, refcheck=False)
    assert (a[:1000] == np.arange(1000, dtype=np.uint8)).all()
    assert (a[1000:] == 0).all()          # NumPy zeroes what resize added
    a.resize(10, refcheck=False)
    assert (a == np.arange(10, dtype=np.uint8)).all()
    del a
    assert h.check() == 0


# -- overflows -------------------------------------------------------------------


def overflow_at_free(h, addr, n, free):
    """Write one byte past an n-byte object at addr, free it, and return
    the HeapCorruptionWarning it got."""
    _testing.poke(addr + n, bytes([0x41]) * 1)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        free()
        gc.collect()
    got = [x for x in w if issubclass(x.category, HeapCorruptionWarning)]
    assert len(got) == 1, [str(x.message) for x in w]
    assert issubclass(got[0].category, RuntimeWarning)
    return str(got[0].message)


@pytest.mark.parametrize("n", [1, 48, 100, 4000, 30000, 100_000, 1 << 20])
def test_a_block_overflow_by_one_byte_is_reported_on_free(n):
    h = pyarena.Heap(debug=True)
    box = [h.alloc(n)]  # site: block
    addr = box[0].address
    text = overflow_at_free(h, addr, n, box.clear)
    assert f"{n}-byte allocation at {addr:#x}" in text
    assert f"offset {n}, the first byte past its end" in text
    assert "test_debug.py" in text and "test_a_block_overflow_by_one_byte" in text
    assert h.stats().corruptions == 1
    with pytest.raises(HeapCorruptionError) as e:
        h.check()
    assert [(p.kind, p.address, p.size) for p in e.value.problems] == [("redzone", addr, n)]
    assert "first damaged byte" in e.value.notes[0]
    assert h.check() == 0                 # taken once; the slot is clean again


def test_check_finds_an_overflow_before_the_free():
    h = pyarena.Heap(debug=True)
    b = h.alloc(200)
    _testing.poke(b.address + 205, bytes([0]) * 3)       # a few bytes past the end
    with pytest.raises(HeapCorruptionError) as e:
        h.check()
    assert [(p.kind, p.address, p.size) for p in e.value.problems] == [("redzone", b.address, 200)]
    # Mend it (the canary byte) and the heap is clean.
    _testing.poke(b.address + 205, bytes([0xFD]) * 3)
    assert h.check() == 1


def test_a_numpy_array_overflow_is_reported():
    h = pyarena.Heap(debug=True)
    box = [h.empty(10, dtype=np.uint8)]
    addr = box[0].ctypes.data
    text = overflow_at_free(h, addr, 10, box.clear)
    assert f"10-byte allocation at {addr:#x}" in text
    with pytest.raises(HeapCorruptionError):
        h.check()
    # Arrays NumPy makes through the heap as its allocator alike.
    with pyarena.numpy_allocator(h):
        box = [np.ones(1000)]
    addr = box[0].ctypes.data
    text = overflow_at_free(h, addr, 8000, box.clear)
    assert f"8000-byte allocation at {addr:#x}" in text
    with pytest.raises(HeapCorruptionError):
        h.check()


@pytest.mark.parametrize("nogil", [True, False])
def test_a_c_level_overflow_is_reported(nogil):
    h = pyarena.Heap(debug=True)
    [p] = _testing.capi_malloc(h, 64, 1, nogil=nogil)
    text = overflow_at_free(h, p, 64, lambda: _testing.capi_free(h, [p]))
    assert f"64-byte allocation at {p:#x}" in text
    if nogil:
        assert "pyarena C-level API (no GIL)" in text
    with pytest.raises(HeapCorruptionError) as e:
        h.check()
    assert e.value.problems[0].kind == "redzone"


def test_an_overwritten_size_word_is_reported():
    h = pyarena.Heap(debug=True)
    box = [h.alloc(100)]
    a, slot = box[0].address, box[0].slot_size
    _testing.poke(a + 100, bytes([0x55]) * (slot - 100))      # the canary and the size word
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        box.clear()
    assert "size word is overwritten" in str(w[0].message)
    with pytest.raises(HeapCorruptionError) as e:
        h.check()
    assert e.value.problems[0].kind == "redzone" and e.value.problems[0].address == a


def test_the_next_python_allocation_raises_what_a_free_found():
    h = pyarena.Heap(debug=True)
    box = [h.alloc(32)]
    _testing.poke(box[0].address + 32, bytes([1]) * 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        box.clear()
    with pytest.raises(HeapCorruptionError) as e:
        h.zeros(4)
    assert e.value.problems[0].kind == "redzone"
    assert (h.zeros(4) == 0).all()          # raised once; the heap works on
    assert h.check() == 0


def test_a_missing_stack_is_said():
    h = pyarena.Heap(debug=True, profile_rate=0)
    box = [h.alloc(64)]
    text = overflow_at_free(h, box[0].address, 64, box.clear)
    assert "allocation stack is not known" in text
    with pytest.raises(HeapCorruptionError):
        h.check()


# -- writes after free ---------------------------------------------------------------


def test_a_write_after_free_is_found_by_check_and_at_reuse():
    h = pyarena.Heap(debug=True)
    keep = [h.alloc(100) for _ in range(3)]
    victim = keep.pop(1)
    a, slot = victim.address, victim.slot_size
    del victim
    _testing.poke(a + 7, bytes([0x42]) * 1)
    with pytest.raises(HeapCorruptionError) as e:
        h.check()
    assert [(p.kind, p.address, p.size) for p in e.value.problems] == \
        [("freed-slot-written", a, slot)]
    # check() does not mend it: allocate until the slot comes back, which
    # reports it (warned, and raised by the allocation that met it).
    got = None
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(20000):
            try:
                keep.append(h.alloc(100))
            except HeapCorruptionError as err:
                got = err
                break
    assert got is not None, "the written slot never came back"
    assert got.problems[0].kind == "freed-slot-written" and got.problems[0].address == a
    assert any(f"slot at {a:#x} was written after its free: first changed byte at offset 7"
               in str(x.message) for x in w)
    # Counted where the allocator met it (check() reports, counts nothing).
    assert h.stats().corruptions == 1
    del keep
    assert h.check() == 0


# -- bad frees ------------------------------------------------------------------------


def test_a_double_free_names_both_addresses_and_raises_through_python():
    h = pyarena.Heap(debug=True)
    [p] = _testing.capi_malloc(h, 100, 1)
    _testing.capi_free(h, [p])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        _testing.capi_free(h, [p])
    text = str(w[0].message)
    assert f"free of {p:#x}, which is already free" in text and f"slot at {p:#x}" in text
    assert h.stats().invalid_frees == 1
    with pytest.raises(HeapCorruptionError) as e:
        h.alloc(10)
    assert e.value.problems[0] == ("double-free", p, 176)


def test_an_interior_free_names_the_slot_it_falls_in():
    h = pyarena.Heap(debug=True)
    [p] = _testing.capi_malloc(h, 100, 1)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        _testing.capi_free(h, [p + 16])
    assert f"free of {p + 16:#x}, which is not an allocation's start: it is inside " \
           f"the 176-byte slot at {p:#x}" in str(w[0].message)
    with pytest.raises(HeapCorruptionError) as e:
        h.check()
    assert e.value.problems[0].kind == "invalid-free"
    _testing.capi_free(h, [p])
    assert h.check() == 0


# -- everything else keeps working ---------------------------------------------------


def test_arenas_and_threads_on_a_debug_heap_stay_clean():
    h = pyarena.Heap(debug=True)
    with pyarena.Arena(heap=h, chunk_size=1 << 20) as ar:
        vals = [ar.zeros(100) for _ in range(50)] + [ar.alloc(30)]
        big = ar.zeros(1 << 19)            # over a quarter chunk: the heap's
        assert h.check() >= 2
    del vals, big
    errors = []
    stop = threading.Event()

    def work(seed):
        rng = np.random.default_rng(seed)
        live = []
        try:
            for i in range(3000):
                n = int(rng.integers(1, 5000))
                live.append(h.alloc(n, zero=bool(i & 1)))
                if len(live) > 40:
                    live.pop(int(rng.integers(0, len(live))))
        except BaseException as e:
            errors.append(e)

    def checker():
        while not stop.is_set():
            try:
                h.check()
            except BaseException as e:
                errors.append(e)
                return

    ts = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    c = threading.Thread(target=checker)
    c.start()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    stop.set()
    c.join()
    assert not errors, errors
    h.release()                   # the arena's chunk, pooled, goes too
    assert h.check() == 0 and h.stats().corruptions == 0


def test_pyarena_debug_makes_the_default_heap_a_debug_heap():
    code = """
import warnings, numpy as np, pyarena
from pyarena import _testing
h = pyarena.default_heap()
print(h.debug, h.profile_rate)
with pyarena.numpy_allocator():
    box = [np.ones(4)]
_testing.poke(box[0].ctypes.data + 32, bytes([0]) * 1)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    box.clear()
print(w[0].category.__name__, "32-byte allocation" in str(w[0].message))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=pyarena_env(PYARENA_DEBUG="1"), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "1", "HeapCorruptionWarning", "True"]
    r = subprocess.run([sys.executable, "-c", "import pyarena; pyarena.default_heap()"],
                       capture_output=True, text=True, env=pyarena_env(PYARENA_DEBUG="yes"),
                       timeout=120)
    assert r.returncode != 0 and "ValueError: PYARENA_DEBUG must be 0 or 1" in r.stderr


def test_a_damaged_bitmap_on_a_debug_heap_is_reported_not_crashed():
    code = """
import pyarena
from pyarena import _testing
h = pyarena.Heap(debug=True)
keep = [h.alloc(n) for n in (10, 100, 5000, 300000)]
_testing.corrupt(h, keep[1].address, "free_bits")
try:
    h.check()
    print("clean")
except pyarena.HeapCorruptionError as e:
    print(",".join(sorted({p.kind for p in e.problems})))
import os
os._exit(0)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=pyarena_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "free-bits" in r.stdout.strip().split(",")
