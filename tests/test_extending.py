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
