"""pyarena_stack.h, the stack capture of a sampled allocation, through a
test-only C extension (tests/stack/stacktest.c) compiled here at test time,
twice: once with the 3.11 interpreter-frame walk, once with the public frame
API, so each is checked against Python's own frames and against the other."""

import gc
import importlib
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import pyarena
from pyarena._pprof import code_frame

HERE = Path(__file__).resolve().parent
API = "pyarena_malloc"


@pytest.fixture(scope="module")
def mods(tmp_path_factory):
    build = tmp_path_factory.mktemp("stack")
    # One copy of the source per module, so the two builds share no object file.
    for name in ("fast", "public"):
        shutil.copy(HERE / "stack" / "stacktest.c", build / f"stacktest_{name}.c")
    (build / "setup.py").write_text(textwrap.dedent(f"""
        from setuptools import Extension, setup
        inc = [{pyarena.get_include()!r}]
        setup(ext_modules=[
            Extension("_stacktest_fast", ["stacktest_fast.c"], include_dirs=inc,
                      define_macros=[("STACKTEST_MODULE", "_stacktest_fast")],
                      extra_compile_args=["-O2", "-Wall", "-Werror"]),
            Extension("_stacktest_public", ["stacktest_public.c"], include_dirs=inc,
                      define_macros=[("STACKTEST_MODULE", "_stacktest_public"),
                                     ("PYARENA_STACK_PUBLIC_API", "1")],
                      extra_compile_args=["-O2", "-Wall", "-Werror"]),
        ])
        """))
    r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=build,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sys.path.insert(0, str(build))
    try:
        yield {"fast": importlib.import_module("_stacktest_fast"),
               "public": importlib.import_module("_stacktest_public")}
    finally:
        sys.path.remove(str(build))


@pytest.fixture(params=["fast", "public"])
def mod(request, mods):
    return mods[request.param]


def python_frames(f):
    out = []
    while f is not None:
        co = f.f_code
        out.append((co.co_filename, co.co_qualname, f.f_lineno, co.co_firstlineno))
        f = f.f_back
    return out


def in_thread(fn):
    """Run fn in a fresh thread, whose stack is shallow, and return its
    result (or raise its exception)."""
    out = {}

    def target():
        try:
            out["r"] = fn()
        except BaseException as e:  # noqa: BLE001 (re-raised below)
            out["e"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "e" in out:
        raise out["e"]
    return out["r"]


def recurse(k, fn):
    if k > 0:
        return recurse(k - 1, fn)
    return fn()


def fast_walk_expected():
    import sysconfig
    return ((3, 11) <= sys.version_info[:2] <= (3, 13)
            and not sysconfig.get_config_var("Py_GIL_DISABLED"))


def test_the_fast_walk_is_built_where_the_layout_is_known(mods):
    assert mods["fast"].FAST == fast_walk_expected()
    assert mods["public"].FAST == 0
    assert mods["fast"].STACK_MAX == 32


def test_capture_is_the_python_stack_innermost_first(mod):
    def probe():
        (got, truncated), want = mod.capture(), python_frames(sys._getframe())
        return got, truncated, want

    got, truncated, want = in_thread(lambda: recurse(5, probe))
    assert len(want) < 32
    assert got == want
    assert not truncated
    assert got[0][1].endswith("probe")
    assert [f[1] for f in got[1:7]] == ["recurse"] * 6


def test_a_deep_stack_keeps_its_innermost_32_frames(mod):
    def probe():
        (got, truncated), want = mod.capture(), python_frames(sys._getframe())
        return got, truncated, want

    got, truncated, want = in_thread(lambda: recurse(60, probe))
    assert len(want) > 60
    assert len(got) == 32 and truncated
    assert got == want[:32]


def test_exactly_32_frames_is_not_truncated(mod):
    def probe():
        (got, truncated), want = mod.capture(), python_frames(sys._getframe())
        return got, truncated, want

    # Frames below recurse(k): the thread's bootstrap, the lambda; probe
    # adds one. Find k so that there are exactly 32 in all.
    base = len(in_thread(lambda: recurse(0, probe))[2])
    k = 32 - base
    got, truncated, want = in_thread(lambda: recurse(k, probe))
    assert len(want) == 32 and got == want and not truncated
    got, truncated, want = in_thread(lambda: recurse(k + 1, probe))
    assert len(want) == 33 and got == want[:32] and truncated


def test_raw_frames_are_the_running_code_objects(mod):
    def probe():
        (raw, t1), (got, t2), f = mod.capture_raw(), mod.capture(), sys._getframe()
        return raw, got, f

    raw, got, f = in_thread(lambda: recurse(2, probe))
    codes = []
    while f is not None:
        codes.append(f.f_code)
        f = f.f_back
    assert [c for c, _ in raw] == codes
    assert all(a is b for (a, _), b in zip(raw, codes))
    # The instruction offsets resolve to the lines the header resolved, with
    # the Python-side resolver the profile snapshot will use.
    assert [code_frame(c, where)[2] for c, where in raw] == [g[2] for g in got]
    assert all(where >= 0 and where % 2 == 0 for _, where in raw)


def test_generator_frames_are_on_the_stack(mod):
    def gen():
        yield mod.capture()

    def consume():
        return next(gen())

    (got, _) = in_thread(consume)
    names = [f[1] for f in got]
    assert names[:2] == [gen.__qualname__, consume.__qualname__]


def test_each_thread_captures_its_own_stack(mod):
    def only_in_the_thread():
        return mod.capture()[0]

    got = in_thread(only_in_the_thread)
    names = [f[1] for f in got]
    assert names[0].endswith("only_in_the_thread")
    assert "Thread._bootstrap" in names
    assert not any("test_each_thread_captures_its_own_stack" == n for n in names)


def blocks_during(fn, depth):
    """Blocks pymalloc gained while fn ran at the bottom of `depth` fresh
    frames (frames that have no frame object yet)."""
    def bottom():
        b0 = sys.getallocatedblocks()
        fn()
        return sys.getallocatedblocks() - b0

    gc.disable()
    try:
        return recurse(depth, bottom)
    finally:
        gc.enable()


def test_the_fast_capture_creates_no_python_objects(mods):
    fast, public = mods["fast"], mods["public"]
    if not fast.FAST:
        pytest.skip("the interpreter-frame walk is built on CPython 3.11-3.13 only")
    base = blocks_during(lambda: fast.bench(100, "none"), 20)
    assert blocks_during(lambda: fast.bench(100, "capture"), 20) == base
    assert blocks_during(lambda: fast.bench(100, "hash"), 20) == base
    # The measurement sees frame objects: the public API makes one per
    # fresh frame (20 recursion frames at least), once.
    assert blocks_during(lambda: public.bench(100, "capture"), 20) >= base + 20


def test_same_line_captures_hash_alike_and_retain_takes_one_reference(mod):
    same_hash, other_size, equal, refs = mod.capture_twice()
    assert same_hash == 1 and equal == 1
    assert other_size == 1     # the size is part of the key, as in Go
    assert refs == 1


def test_without_the_gil_one_frame_names_the_api(mod):
    assert mod.capture_nogil() == ([(None, API, 0, 0)], False)
    # With the GIL, the same call records the Python stack.
    got, _ = mod.capture_auto()
    assert got[0][1] == "test_without_the_gil_one_frame_names_the_api"


def test_native_backtrace_names_exported_callers(mods):
    ext = mods["fast"]
    # In a fresh thread the native stack is shallow enough to fit.
    frames, truncated = in_thread(lambda: ext.capture_native(3))
    assert frames[0] == (None, API, 0, 0)
    assert not truncated
    natives = frames[1:]
    assert all(f[3] == -1 and f[2] >= 0 for f in natives)
    syms = [f[1] for f in natives]
    # recurse(3) -> recurse(2) -> recurse(1) -> recurse(0) -> leaf.
    assert syms.count("stacktest_native_recurse") == 4
    assert any(f[0] and Path(f[0]).name.startswith("_stacktest_fast") for f in natives)
    # Further out, the interpreter that called the extension.
    assert "_PyEval_EvalFrameDefault" in syms


def test_native_skip_drops_innermost_frames(mods):
    ext = mods["fast"]
    full, _ = ext.capture_native(4, 0)
    skipped, _ = ext.capture_native(4, 2)
    assert skipped[0] == full[0] == (None, API, 0, 0)
    # Both hold the 31 innermost native frames they were allowed: the
    # skipped capture's start two frames further out.
    assert len(full) == len(skipped) == 32
    assert skipped[1:30] == full[3:32]


def test_a_deep_native_stack_is_truncated(mods):
    frames, truncated = mods["fast"].capture_native(60)
    assert len(frames) == 32 and truncated
    # Under a preloaded sanitizer runtime (CI's ASAN pass) its interceptor's
    # frame sits between the leaf and the recursion, and takes one place.
    runtime = sum(1 for f in frames if f[0] and "libasan" in f[0])
    assert [f[1] for f in frames[1:]].count("stacktest_native_recurse") >= 30 - runtime
