"""The C-level API from another package, as NumPy's test_extending does it:
compile tests/extending/use_pyarena.pyx, which does ``from pyarena cimport
Heap``, against the installed pyarena at test time, then drive it with and
without the GIL (OpenMP prange over 2 threads)."""

import importlib
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import pyarena
from pyarena import _testing

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ext(tmp_path_factory):
    import Cython  # noqa: F401  (a test dependency: the example is built here)
    build = tmp_path_factory.mktemp("extending")
    shutil.copy(HERE / "extending" / "use_pyarena.pyx", build)
    (build / "setup.py").write_text(textwrap.dedent(f"""
        from setuptools import Extension, setup
        from Cython.Build import cythonize
        ext = Extension("use_pyarena", ["use_pyarena.pyx"],
                        include_dirs=[{pyarena.get_include()!r}],
                        extra_compile_args=["-fopenmp", "-O2"],
                        extra_link_args=["-fopenmp"])
        setup(ext_modules=cythonize([ext], include_path=[{str(Path(pyarena.get_include()).parent)!r}]))
        """))
    r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=build,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sys.path.insert(0, str(build))
    try:
        yield importlib.import_module("use_pyarena")
    finally:
        sys.path.remove(str(build))


@pytest.mark.parametrize("size", [1, 16, 100, 1024, 8192, 40000, 300000])
def test_alloc_free_with_gil(ext, size):
    h = pyarena.Heap()
    n = 200 if size < 100000 else 20
    assert ext.with_gil(h, n, size) == n
    st = h.stats()
    assert st.heap_objects == 0
    assert st.invalid_frees == 0
    _testing.check_heap(h)


@pytest.mark.parametrize("size", [16, 64, 256, 1024, 8192])
def test_alloc_free_without_gil_two_threads(ext, size):
    h = pyarena.Heap()
    per, rounds = 3000, 4
    assert ext.without_gil(h, 2, per, size, rounds) == 2 * per * rounds
    st = h.stats()
    assert st.heap_objects == 0
    assert st.mallocs == st.frees == 2 * per * rounds
    assert st.invalid_frees == 0
    _testing.check_heap(h)
    # The heap is still sound for Python use afterwards.
    a = h.zeros(1000)
    assert not a.any()


def test_bad_frees_are_reported_not_corrupting(ext):
    h = pyarena.Heap()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ext.double_free(h)
    msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
    assert len(msgs) == 2, msgs
    assert "freed twice" in msgs[0] and "not in this heap" in msgs[1]
    assert h.stats().invalid_frees == 2
    assert h.stats().heap_objects == 0
    _testing.check_heap(h)


@pytest.mark.parametrize("size", [16, 64, 512, 4096])
def test_frees_race_with_the_owning_cache(ext, size):
    # Each thread frees into spans the other thread's cache is allocating
    # from at that very moment; nothing may be lost or handed out twice.
    h = pyarena.Heap()
    per, rounds = 4000, 6
    assert ext.interleaved(h, 2, per, size, rounds) == 2 * per * rounds
    st = h.stats()
    assert st.heap_objects == 0
    assert st.mallocs == st.frees == 2 * per * rounds
    assert st.invalid_frees == 0
    _testing.check_heap(h)


def test_function_table_from_cython(ext):
    h = pyarena.Heap()
    p, n = ext.c_table(h)
    assert p % 16 == 0 and n >= 100
    assert h.stats().heap_objects == 0 and h.stats().mallocs == 1
    h.close()
    # A heap unmapped by close() hands out nothing, and frees are harmless.
    assert ext.c_malloc(h, 64) == 0 and ext.c_calloc(h, 4, 4) == 0
    assert ext.c_realloc(h, 0, 64) == 0 and ext.c_usable_size(h, 0) == 0
    ext.c_free(h, 0)


def test_closed_heap_frees_but_does_not_allocate(ext):
    h = pyarena.Heap()
    p = ext.c_malloc(h, 64)
    h.close()                       # p is alive: the heap stays mapped
    assert ext.c_malloc(h, 64) == 0
    assert ext.c_realloc(h, p, 128) == 0
    assert ext.c_usable_size(h, p) >= 64
    ext.c_free(h, p)
    assert h.stats().heap_objects == 0 and h.stats().invalid_frees == 0


# The C-level malloc/calloc/realloc/free/usable_size against a model: a
# dict of live allocations and the bytes each must hold.

from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import (  # noqa: E402
    Bundle, RuleBasedStateMachine, consumes, invariant, rule)

SIZES = st.one_of(st.integers(0, 16), st.integers(17, 1100), st.integers(1101, 40000),
                  st.sampled_from([65536, 300000]))


class CLevelMachine(RuleBasedStateMachine):
    ext = None          # set by the test (the compiled module)
    ptrs = Bundle("ptrs")
    freed = Bundle("freed")

    def __init__(self):
        super().__init__()
        self.h = pyarena.Heap()
        self.live = {}            # address -> bytes it must hold
        self.sizes = {}           # address -> size asked
        self.serial = 0
        self.zerobase = self.ext.c_malloc(self.h, 0)

    def _fill(self, p, n):
        self.serial = (self.serial + 1) % 251 + 1
        self.ext.write(p, n, self.serial)
        self.live[p] = bytes([self.serial]) * n

    def _new(self, p, n):
        assert p != 0
        if n == 0:
            assert p == self.zerobase
            return p
        assert p % 16 == 0
        assert p not in self.live, "handed out twice"
        assert self.ext.c_usable_size(self.h, p) >= n
        self.sizes[p] = n
        return p

    @rule(target=ptrs, n=SIZES)
    def malloc(self, n):
        p = self._new(self.ext.c_malloc(self.h, n), n)
        if n:
            self._fill(p, n)
        return p

    @rule(target=ptrs, n=st.integers(0, 64), size=st.integers(0, 700))
    def calloc(self, n, size):
        p = self._new(self.ext.c_calloc(self.h, n, size), n * size)
        if n * size:
            assert self.ext.read(p, n * size) == bytes(n * size)
            self._fill(p, n * size)
        return p

    @rule(target=ptrs, p=consumes(ptrs), n=SIZES)
    def realloc(self, p, n):
        old = self.live.pop(p, b"")
        self.sizes.pop(p, None)
        q = self.ext.c_realloc(self.h, p, n)
        q = self._new(q, n) if n else q
        keep = min(len(old), n)
        if n:
            assert self.ext.read(q, keep) == old[:keep]
            self._fill(q, n)
        return q

    @rule(target=freed, p=consumes(ptrs))
    def free(self, p):
        self.live.pop(p, None)
        self.sizes.pop(p, None)
        self.ext.c_free(self.h, p)
        return p

    @rule(p=freed, offset=st.sampled_from([0, 0, 0, 8, 1]))
    def free_again(self, p, offset):
        # A pointer freed already (its slot not handed out again), or inside
        # an allocation: reported, counted, ignored, nothing else changes.
        q = p + offset
        if p == self.zerobase or q in self.live:
            return          # the slot went to a new allocation: q is live
        before = self.h.stats()
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            self.ext.c_free(self.h, q)
        after = self.h.stats()
        assert after.invalid_frees == before.invalid_frees + 1
        assert after.frees == before.frees and after.heap_objects == before.heap_objects
        assert any(issubclass(x.category, RuntimeWarning) for x in w)

    @invariant()
    def contents_and_counts(self):
        for p, data in self.live.items():
            assert self.ext.read(p, len(data)) == data
        spans = sorted((p, p + self.ext.c_usable_size(self.h, p)) for p in self.live)
        for (a, b), (c, d) in zip(spans, spans[1:]):
            assert b <= c, "live allocations overlap"
        assert self.h.check() == len(self.live)
        assert self.h.stats().heap_objects == len(self.live)

    def teardown(self):
        for p in list(self.live):
            self.ext.c_free(self.h, p)
        assert self.h.stats().heap_objects == 0
        self.h.close()


def test_clevel_state_machine(ext):
    CLevelMachine.ext = ext
    runner = CLevelMachine.TestCase
    runner.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                               suppress_health_check=list(HealthCheck))
    runner().runTest()


def test_heap_head_matches_the_public_header():
    # pyarena_capi.h finds the table at a fixed offset of the object.
    off, header = _testing.capi_offset(pyarena.Heap())
    assert off == header == 24


def test_none_is_not_a_heap_for_the_c_level_api(ext):
    # `def f(Heap h)` accepts None; the C-level calls on it allocate and
    # free nothing instead of reading a table that is not there.
    assert ext.c_malloc(None, 64) == 0 and ext.c_calloc(None, 2, 2) == 0
    assert ext.c_realloc(None, 0, 8) == 0 and ext.c_usable_size(None, 0) == 0
    ext.c_free(None, 0)


def test_kept_table_survives_the_heap_being_unmapped(ext):
    h = pyarena.Heap()
    p, n = ext.c_table(h)
    h.close()                 # nothing alive: the mheap is unmapped now
    assert h.stats().heap_sys == 0
    p, n = ext.c_table(h)     # the table is the closed one: no crash
    assert p == 0 and n == 0
