"""Hostile but legal Python against every allocator: one test per class of
defect, run across Heap, Arena, the module functions and reflect.

1. Buffers without strides or shape (ctypes, NumPy scalars) are read safely.
2. Objects whose __init__ never ran are safe; copy and pickle refuse clearly.
3. No value is a window onto more memory than itself, and "known zero" is
   never trusted for memory Python could have written.
4. Every argument is converted once.
5. User code called back during a method (close(), free()) cannot pull
   memory from under it.
6. The page heap's counters stay exact (the conftest fixture checks every
   heap after every test; here the paths that map and release pages).
7. Unknown keyword arguments are TypeErrors.

Crashes are looked for in subprocesses, so that a segfault fails the test
instead of the run.
"""

import copy
import os
import ctypes
import gc
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pyarena

# Subprocesses import the pyarena under test, whatever their working directory.
SUBPROCESS_ENV = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(pyarena.__file__))
                      + os.pathsep + os.environ.get("PYTHONPATH", ""))
from pyarena import _testing, reflect


def run(code):
    """Run code in a fresh interpreter; its stdout. A crash fails."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=120, env=SUBPROCESS_ENV)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def allocators():
    h = pyarena.Heap()
    return {"heap": h, "arena": pyarena.Arena(heap=h, chunk_size=1 << 20)}


@pytest.fixture(params=["heap", "arena"])
def alloc(request):
    h = pyarena.Heap()
    a = h if request.param == "heap" else pyarena.Arena(heap=h, chunk_size=1 << 20)
    yield a
    if isinstance(a, pyarena.Arena):
        a.free()
    h.close()


# ---------------------------------------------------------------------------
# 1. Buffers without strides or shape


class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_double), ("y", ctypes.c_int)]


def strideless_buffers():
    """Exporters that give no strides (ctypes) or are NumPy scalars."""
    return [(ctypes.c_int * 5)(), (ctypes.c_double * 3 * 2)(), Point(), ctypes.c_char(),
            (ctypes.c_uint8 * 0)(), np.datetime64("2020-01-01"), np.timedelta64(5),
            np.float64(1.5), np.void(b"abc"), bytearray(b"xy"), b"", memoryview(b"abc")[::-1]]


def test_owns_reads_any_buffer_in_a_subprocess():
    out = run("""
        import ctypes, numpy as np, pyarena
        h = pyarena.Heap(); a = pyarena.Arena()
        class P(ctypes.Structure):
            _fields_ = [("x", ctypes.c_double)]
        objs = [(ctypes.c_int * 5)(), (ctypes.c_double * 3 * 2)(), P(),
                np.datetime64("2020-01-01"), np.timedelta64(5), np.float64(1.5)]
        print([(h.owns(o), a.owns(o)) for o in objs])
        """)
    assert out.strip() == str([(False, False)] * 6)


@pytest.mark.parametrize("kind", ["int5", "nested", "struct", "char"])
def test_owns_own_ctypes_values_without_strides(alloc, kind):
    t = {"int5": ctypes.c_int * 5, "nested": ctypes.c_double * 3 * 2, "struct": Point,
         "char": ctypes.c_char}[kind]
    v = alloc.new(t)
    assert memoryview(v).strides in ((), None) or True   # ctypes may give none
    assert alloc.owns(v)
    w = alloc.newarray(ctypes.c_int, 5)
    assert alloc.owns(w)
    other = pyarena.Heap()
    assert not other.owns(v) and not other.owns(w)


def test_owns_foreign_strideless_buffers_is_false(alloc):
    for obj in strideless_buffers():
        assert alloc.owns(obj) is False


def test_owns_datetime_arrays_and_negative_strides(alloc):
    a = alloc.zeros(10, "M8[s]")
    assert alloc.owns(a) and alloc.owns(a[::-1]) and alloc.owns(a[::3])
    b = alloc.zeros((4, 5), "m8[ms]")
    assert alloc.owns(b.T) and alloc.owns(b[::-1, ::-2])
    blk = alloc.alloc(64)
    mv = memoryview(blk)[::-1]
    assert alloc.owns(mv)


def test_owns_refuses_non_buffers(alloc):
    for bad in ([1, 2], object(), 1.5, "abc"):
        with pytest.raises(TypeError):
            alloc.owns(bad)


def test_owns_of_addresses(alloc):
    b = alloc.alloc(100)
    assert alloc.owns(b.address) and alloc.owns(b.address + 99)
    for bad in (-1, 2**48, 2**64, 2**100, -(2**70)):
        assert alloc.owns(bad) is False

    class Sneaky(int):            # its comparisons are never asked
        def __lt__(self, o):
            raise AssertionError("compared")
        __ge__ = __gt__ = __le__ = __lt__
    assert alloc.owns(Sneaky(b.address))


# ---------------------------------------------------------------------------
# 2. Half-built objects, copy and pickle

HALF_BUILT = """
    import ctypes, numpy as np, pyarena
    from pyarena._arena import _Chunk
    out = []
    def calls(o):
        return [lambda: o.zeros(3), lambda: o.empty(3), lambda: o.full(3, 1.0),
                lambda: o.zeros_like(np.ones(3)), lambda: o.empty_like(np.ones(3)),
                lambda: o.full_like(np.ones(3), 2), lambda: o.new("f8"),
                lambda: o.new(ctypes.c_int), lambda: o.newarray("i4", 4),
                lambda: o.newarray(ctypes.c_int, 4), lambda: o.alloc(10),
                lambda: o.owns(1), lambda: o.stats(), lambda: repr(o),
                lambda: o.free(), lambda: o.clone(np.ones(2)), lambda: o.check(),
                lambda: o.release(), lambda: o.close(), lambda: o.numpy_handler()]
    class SkipsInit(pyarena.Arena):
        def __init__(self):
            pass
    objs = [pyarena.Arena.__new__(pyarena.Arena), SkipsInit(),
            pyarena.Heap.__new__(pyarena.Heap), pyarena.Allocator(),
            pyarena.Allocator.__new__(pyarena.Allocator)]
    for o in objs:
        for f in calls(o):
            try:
                f()
                out.append("ok")
            except (ValueError, TypeError, AttributeError) as e:
                out.append(type(e).__name__ + ":" + str(e)[:40])
    b = pyarena.Block.__new__(pyarena.Block)
    out.append((len(b), bytes(memoryview(b)), b.address, b.heap))
    c = _Chunk.__new__(_Chunk)
    try:
        memoryview(c)
    except TypeError:
        out.append("chunk exports nothing")
    del b, c
    print(out)
"""


def test_half_built_objects_never_crash():
    out = run(HALF_BUILT)
    assert "Arena is not initialised" in out
    assert "(0, b'', 0, None)" in out
    assert "chunk exports nothing" in out


def test_uninitialised_arena_names_the_problem():
    a = pyarena.Arena.__new__(pyarena.Arena)
    for f in (lambda: a.zeros(3), lambda: a.new("f8"), lambda: a.alloc(1), a.stats):
        with pytest.raises(ValueError, match="not initialised"):
            f()
    assert repr(a) == "<pyarena.Arena not initialised>"


def test_arena_init_twice_is_refused():
    a = pyarena.Arena()
    x = a.zeros(4)
    with pytest.raises(ValueError, match="already initialised"):
        a.__init__()
    assert x.sum() == 0


def test_heap_cannot_be_subclassed():
    # Heap is final: its C-level fast paths call its methods directly.
    with pytest.raises(TypeError):
        type("H", (pyarena.Heap,), {})


UNBOUND = """
    import pyarena
    from pyarena._arena import _Chunk
    out = []
    h, a = pyarena.Heap(), pyarena.Arena()
    b = h.alloc(8)
    calls = []
    for cls in (pyarena.Heap, pyarena.Arena, pyarena.Block, pyarena.Allocator, _Chunk):
        for name, f in vars(cls).items():
            if callable(f) and not name.startswith("__") or name in (
                    "__reduce__", "__setstate_cython__", "__reduce_cython__", "__enter__",
                    "__exit__", "__len__", "__repr__", "__getbuffer__"):
                calls.append((cls.__name__ + "." + name, f))
    for label, f in calls:
        for other in (None, 5, object(), b, h, a):
            try:
                f(other)
                out.append("ok")
            except (TypeError, ValueError, AttributeError) as e:
                out.append(type(e).__name__)
    print(len(calls), out.count("TypeError"), h.check(), b.address != 0)
"""


def test_methods_called_through_the_class_check_self():
    # Issue 8, found by the fuzzer (N4): Cython's binding methods take any
    # self, so Heap.release(object()) crashed. The classes bind their
    # methods as C descriptors, which check self's type.
    n, type_errors, checked, alive = run(UNBOUND).split()
    assert int(n) > 30 and int(type_errors) > 100
    assert int(checked) >= 1 and alive == "True"
    h = pyarena.Heap()
    for f, other in ((pyarena.Heap.release, object()), (pyarena.Heap.stats, pyarena.Arena()),
                     (pyarena.Heap.close, None), (pyarena.Allocator.new, None)):
        with pytest.raises(TypeError, match="doesn't apply"):
            f(other) if f is not pyarena.Allocator.new else f(other, "f8")
    # The shared face applies to every allocator: an Arena's alloc of a heap.
    assert pyarena.Arena.alloc(h, 8).heap is h


@pytest.mark.parametrize("f", [pyarena.numpy_allocator, pyarena.install_numpy_allocator])
def test_numpy_allocator_of_a_non_heap_is_a_type_error(f):
    # Refused at the call, not when the block is entered (the fuzzer's N1).
    with pytest.raises(TypeError, match="must be a pyarena.Heap, not int"):
        f(5)


@pytest.mark.parametrize("make", [pyarena.Heap, pyarena.Arena, lambda: pyarena.alloc(8),
                                  lambda: pyarena.Arena().zeros(3).base,
                                  pyarena.Allocator])
def test_copy_and_pickle_refuse_clearly(make):
    o = make()
    for f in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="pickle|copy"):
            f(o)


def test_values_copy_and_pickle_as_their_types(alloc):
    a = alloc.zeros(5) + 1
    assert np.array_equal(pickle.loads(pickle.dumps(a)), a)
    p = alloc.new(Point)
    p.x = 2.5
    q = copy.copy(p)
    assert q.x == 2.5 and ctypes.addressof(q) != ctypes.addressof(p)
    assert pickle.loads(pickle.dumps(p)).x == 2.5


# ---------------------------------------------------------------------------
# 3. No window onto more than the value; known-zero never trusted wrongly


def exported_ranges(v):
    """Every buffer reachable from a value through its base, its ctypes
    keep-alive objects and their bases, as (lo, hi) byte ranges."""
    seen, out, todo = set(), [], [v]
    while todo:
        o = todo.pop()
        if o is None or id(o) in seen:
            continue
        seen.add(id(o))
        try:
            m = memoryview(o)
        except (TypeError, ValueError):
            m = None
        if m is not None and m.nbytes:
            if isinstance(o, np.ndarray):
                lo, hi = np.lib.array_utils.byte_bounds(o)
            else:
                a = np.frombuffer(m.cast("B") if m.contiguous else m.tobytes(), np.uint8)
                lo = ctypes.addressof(ctypes.c_char.from_buffer(m.cast("B"))) \
                    if not m.readonly and m.contiguous else None
                hi = lo + m.nbytes if lo is not None else None
            if lo is not None:
                out.append((lo, hi))
        todo.append(getattr(o, "base", None))
        objs = getattr(o, "_objects", None)
        if isinstance(objs, dict):
            todo.extend(objs.values())
        if isinstance(o, memoryview):
            todo.append(o.obj)
    return out


@pytest.mark.parametrize("kind", ["block", "array", "ctypes", "ctypes_array", "zerodim"])
def test_no_value_exposes_more_than_itself(alloc, kind):
    v = {"block": lambda: alloc.alloc(24),
         "array": lambda: alloc.zeros(5, "u1"),
         "ctypes": lambda: alloc.new(Point),
         "ctypes_array": lambda: alloc.newarray(ctypes.c_int16, 3),
         "zerodim": lambda: alloc.new("f4")}[kind]()
    if isinstance(v, np.ndarray):
        lo0, hi0 = np.lib.array_utils.byte_bounds(v)
    elif isinstance(v, pyarena.Block):
        lo0, hi0 = v.address, v.address + v.nbytes
    else:
        lo0 = ctypes.addressof(v)
        hi0 = lo0 + ctypes.sizeof(v)
    for lo, hi in exported_ranges(v):
        assert lo0 <= lo and hi <= hi0, (kind, (lo, hi), (lo0, hi0))


def test_arena_zeros_after_writes_through_every_reachable_buffer():
    # Issue 8's reproducer, and the same through every value kind.
    for chunk in (1 << 20, 8 << 20):
        a = pyarena.Arena(chunk_size=chunk)
        x = a.zeros(16, "u1")
        with pytest.raises(TypeError):
            memoryview(x.base)
        vals = [a.alloc(100), a.zeros(100, "u1"), a.new(ctypes.c_char * 100),
                a.newarray(ctypes.c_uint8, 100)]
        for v in vals:
            for lo, hi in exported_ranges(v):
                ctypes.memset(lo, 0xFF, hi - lo)
        assert a.zeros(chunk // 4, "u1").max() == 0
        a.free()
        del x, vals
        b = pyarena.Arena(chunk_size=chunk)        # reuses the pooled chunk
        assert b.zeros(chunk // 4, "u1").max() == 0
        assert all(b.zeros(1000, "u1").max() == 0 for _ in range(20))
        b.free()


# ---------------------------------------------------------------------------
# 4. Every argument converted once


class Counted:
    """An index that counts how often it is read and lies after the first."""

    def __init__(self, first, later):
        self.first, self.later, self.reads = first, later, 0

    def __index__(self):
        self.reads += 1
        return self.first if self.reads == 1 else self.later


@pytest.mark.parametrize("call", [
    "alloc", "align", "zeros", "zeros_tuple", "empty", "full", "newarray_dtype",
    "newarray_ctypes", "zeros_like_shape", "chunk_size",
])
def test_each_argument_is_read_once(alloc, call):
    n = Counted(8, 100000)
    if call == "alloc":
        v = alloc.alloc(n)
        assert v.nbytes == 8
    elif call == "align":
        n = Counted(16, 3)
        v = alloc.alloc(40, align=n)
        assert v.address % 16 == 0
    elif call == "zeros":
        v = alloc.zeros(n, "u1")
        assert v.shape == (8,)
    elif call == "zeros_tuple":
        v = alloc.zeros((2, n), "u1")
        assert v.shape == (2, 8)
    elif call == "empty":
        v = alloc.empty([n], "u1")
        assert v.shape == (8,)
    elif call == "full":
        v = alloc.full(n, 7, "u1")
        assert v.shape == (8,) and (v == 7).all()
    elif call == "newarray_dtype":
        v = alloc.newarray("u1", n)
        assert v.shape == (8,)
    elif call == "newarray_ctypes":
        v = alloc.newarray(ctypes.c_char, n)
        assert len(v) == 8 and ctypes.sizeof(v) == 8
    elif call == "zeros_like_shape":
        v = alloc.zeros_like(np.ones(3), shape=(n,))
        assert v.shape == (8,)
    elif call == "chunk_size":
        n = Counted(1 << 20, 8192)
        a = pyarena.Arena(chunk_size=n)
        v = a.zeros(100000, "u1")              # fits a 1 MiB chunk's quarter
        assert a.owns(v)
    assert n.reads == 1
    # The neighbour is intact: nothing was written past the value.
    w = alloc.zeros(64, "u1")
    assert w.max() == 0


def test_dtype_argument_converted_once(alloc):
    class D:
        reads = 0

        @property
        def dtype(self):
            D.reads += 1
            return np.dtype("u1") if D.reads == 1 else np.dtype("f8")

    v = alloc.zeros(8, D())
    assert D.reads == 1 and v.dtype == np.uint8 and v.nbytes == 8
    D.reads = 0
    w = alloc.newarray(D(), 4)
    assert D.reads == 1 and w.nbytes == 4


# ---------------------------------------------------------------------------
# 5. User code called back mid-method cannot pull memory from under it

CALLBACKS = """
    import ctypes, gc, numpy as np, pyarena
    results = []
    def attempt(name, f):
        try:
            v = f()
            results.append((name, "ok"))
            return v
        except (ValueError, TypeError, MemoryError, BufferError) as e:
            results.append((name, type(e).__name__))
    for kind in ("heap", "arena"):
        for what in ("align", "shape", "dim", "count", "dtype", "fill", "like",
                     "owns", "owns_array", "full_dtype", "finalizer"):
            h = pyarena.Heap()
            a = h if kind == "heap" else pyarena.Arena(heap=h, chunk_size=1 << 20)
            def hit():
                h.close()
                if kind == "arena":
                    a.free()
            class E(int):
                def __sub__(s, o): hit(); return int(s) - o
                def __and__(s, o): hit(); return int(s) & o
                def __lt__(s, o): hit(); return int(s) < o
                def __le__(s, o): hit(); return int(s) <= o
                def __index__(s): hit(); return int(s)
            class I:
                def __index__(s): hit(); return 16
            class D:
                @property
                def dtype(s): hit(); return np.dtype("f8")
            class F:
                def __array__(s, dtype=None, copy=None): hit(); return np.ones(1)
                def __float__(s): hit(); return 1.0
            class S(np.ndarray):
                @property
                def nbytes(s): hit(); return 8
                @property
                def shape(s): hit(); return (3,)
                @property
                def __array_interface__(s): hit(); return {}
                @property
                def strides(s): hit(); return (8,)
            class Dies:
                def __del__(s): hit()
            big = 300000 if kind == "heap" else 1000
            v = None
            if what == "align":
                v = attempt(what, lambda: a.alloc(big, align=E(16)))
            elif what == "shape":
                v = attempt(what, lambda: a.zeros(I(), "f8"))
            elif what == "dim":
                v = attempt(what, lambda: a.zeros((2, I()), "f8"))
            elif what == "count":
                v = attempt(what, lambda: a.newarray(ctypes.c_double, I()))
            elif what == "dtype":
                v = attempt(what, lambda: a.zeros(big, D()))
            elif what == "fill":
                v = attempt(what, lambda: a.full(big, F(), "f8"))
            elif what == "full_dtype":
                v = attempt(what, lambda: a.full(big, F()))
            elif what == "like":
                x = np.ones(5).view(S)
                v = attempt(what, lambda: a.zeros_like(x))
            elif what == "owns":
                x = np.ones(5).view(S)
                v = attempt(what, lambda: a.owns(x))
            elif what == "owns_array":
                x = a.zeros(5).view(S)
                v = attempt(what, lambda: a.owns(x))
            elif what == "finalizer":
                # A finalizer run by a collection during allocation.
                for _ in range(50):
                    d = Dies(); d.self = d; del d
                gc.disable(); gc.enable()
                v = attempt(what, lambda: [a.zeros(100) for _ in range(2000)])
            if isinstance(v, np.ndarray):
                v[...] = 3
                assert (v == 3).all()
            elif isinstance(v, list):
                for y in v:
                    y[...] = 3
            del v
            gc.collect()
            h.check()
    print(results)
"""


def test_callbacks_that_close_the_heap_or_free_the_arena():
    out = run(CALLBACKS)
    assert "align" in out and "finalizer" in out


def test_close_from_a_callback_keeps_values_valid():
    h = pyarena.Heap()

    class I:
        def __index__(self):
            h.close()
            return 1000

    with pytest.raises(ValueError, match="closed"):
        h.zeros(I())
    assert h.closed and h.check() == 0


# ---------------------------------------------------------------------------
# 6. Counters exact on every path that maps, releases or reuses pages


def test_released_counts_after_gigabyte_free():
    # Issue 8's reproducer: a 1 GiB object is given back to the OS on free.
    h = pyarena.Heap()
    b = h.alloc(1 << 30)
    del b
    st = h.stats()
    assert st.heap_released == 1 << 30 and st.heap_released <= st.heap_idle
    x = h.alloc(64 << 20)
    st = h.stats()
    assert st.heap_released == (1 << 30) - (64 << 20)
    assert st.heap_released <= st.heap_idle
    del x
    assert h.check() == 0
    h.release()
    st = h.stats()
    assert st.heap_released == st.heap_idle == st.heap_sys


def test_counters_across_release_reuse_and_spares():
    h = pyarena.Heap()
    for size in (100, 20000, 1 << 20, 5 << 20, (1 << 30) + 8192):
        xs = [h.alloc(size) for _ in range(3)]
        h.check()
        del xs[1]
        h.release()
        h.check()
        xs.append(h.alloc(size))
        del xs
        h.check()
    st = h.stats()
    assert st.heap_sys == st.heap_inuse + st.heap_idle
    assert st.heap_released <= st.heap_idle


# ---------------------------------------------------------------------------
# 7. Unknown keywords


@pytest.mark.parametrize("call", [
    lambda: pyarena.Heap(nonsense=1),
    lambda: pyarena.Heap(debug=True, nonsense=1),
    lambda: pyarena.Heap(1),
    lambda: pyarena.Arena(nonsense=1),
    lambda: pyarena.Heap().alloc(8, nonsense=1),
    lambda: pyarena.Heap().zeros(3, nonsense=1),
    lambda: pyarena.Arena().zeros(3, nonsense=1),
    lambda: pyarena.zeros(3, nonsense=1),
    lambda: pyarena.alloc(3, nonsense=1),
    lambda: pyarena.zeros_like(np.ones(2), nonsense=1),
    lambda: pyarena.Heap().new("f8", nonsense=1),
    lambda: reflect.unsafe_New("f8", nonsense=1),
    lambda: pyarena.Heap().stats(nonsense=1),
    lambda: pyarena.Heap().check(1),
    lambda: pyarena.Arena().free(nonsense=1),
    lambda: pyarena.numpy_allocator(nonsense=1).__enter__(),
    lambda: pyarena.install_numpy_allocator(nonsense=1),
])
def test_unknown_arguments_are_type_errors(call):
    with pytest.raises(TypeError):
        call()


# ---------------------------------------------------------------------------
# NumPy's rules the face follows


def test_like_order_none_is_k(alloc):
    a = np.ones((4, 6))[:, ::2].T        # neither C nor F contiguous
    for f in (alloc.zeros_like, alloc.empty_like):
        r = f(a, order=None)
        n = np.zeros_like(a, order=None)
        assert r.strides == n.strides and r.shape == n.shape
    r = alloc.full_like(a, 2, order=None)
    assert r.strides == np.full_like(a, 2, order=None).strides


def test_a_threads_first_allocation_survives_a_finalizer_closing_the_heap():
    # A thread's first cache of a heap makes Python objects (its end hook);
    # a collection they start may run a finalizer that closes the heap. The
    # allocation must notice, not write into an unmapped heap.
    out = run("""
        import gc, threading, pyarena
        h = pyarena.Heap()
        ran = []
        class Closer:
            def __del__(self):
                h.close()
                ran.append(1)
        def worker():
            c = Closer(); c.self = c; del c
            gc.set_threshold(1)
            try:
                h.alloc(64)
                print("allocated")
            except ValueError as e:
                print("refused:", e)
        t = threading.Thread(target=worker); t.start(); t.join()
        gc.set_threshold(700)
        print("finalizer ran" if ran else "finalizer did not run")
        """)
    assert "finalizer ran" in out
    assert "refused: allocation from a closed heap" in out or "allocated" in out
