"""The debug heap under AddressSanitizer and valgrind's memcheck
(pyarena_sanitize.h): a write into a redzone or a freed slot is stopped at
the faulting instruction, not found later.

The memcheck test runs wherever valgrind is installed and pyarena was built
with its headers. The ASAN tests need an ASAN build: .ci/run makes one and
runs the whole suite on it (its second pass), where they run; in a plain
build they are skipped, saying so.
"""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from pyarena import _testing
from support import pyarena_env

SAN = _testing.sanitizers()
asan_only = pytest.mark.skipif(not SAN["address"],
                               reason="not an ASAN build (the ASAN pass of .ci/run runs this)")


def program(*parts):
    return "".join(textwrap.dedent(part) for part in parts)


# The child's reports go to its stderr, where the tests read them, not to
# the log files of .ci/asan (which must stay empty).
CHILD_ASAN = "detect_leaks=0:allocator_may_return_null=1:handle_segv=0"


def run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=120,
                          env=pyarena_env(ASAN_OPTIONS=CHILD_ASAN, **env))


# What each case does after `h = pyarena.Heap(debug=True)`; each ends in a
# write (or read) the sanitizer must stop, so "reached" never prints.
CASES = {
    "block-overflow": """
        b = h.alloc(40)
        ctypes.memset(b.address + 40, 0x41, 1)
    """,
    "array-overflow": """
        with pyarena.numpy_allocator(h):
            a = np.ones(5)
        ctypes.memset(a.ctypes.data + 40, 0, 1)
    """,
    "c-level-overflow": """
        [p] = _testing.capi_malloc(h, 64, 1)
        ctypes.memset(p + 64, 0, 1)
    """,
    "write-after-free": """
        b = h.alloc(100)
        p = b.address
        del b
        ctypes.memset(p + 8, 1, 1)
    """,
    "read-after-free": """
        [p] = _testing.capi_malloc(h, 200, 1)
        _testing.capi_free(h, [p])
        ctypes.string_at(p, 8)      # (a 1-byte bytes is CPython's cached one)
    """,
}
PRELUDE = """
    import ctypes, numpy as np, pyarena
    from pyarena import _testing
    h = pyarena.Heap(debug=True, profile_rate=0)
"""


@asan_only
@pytest.mark.parametrize("case", sorted(CASES))
def test_asan_stops_the_bad_access_where_it_happens(case):
    r = run(program(PRELUDE, CASES[case], "print('reached')\n"))
    assert r.returncode != 0 and "reached" not in r.stdout, r.stdout
    assert "ERROR: AddressSanitizer: use-after-poison" in r.stderr, r.stderr[-3000:]
    kind = "READ of size 8" if case.startswith("read") else "WRITE of size 1"
    assert kind in r.stderr


@asan_only
def test_asan_build_release_heap_and_debug_heap_run_clean():
    # The same work, within bounds, on both kinds of heap: no report.
    r = run(program(PRELUDE, """
        for heap in (h, pyarena.Heap()):
            with pyarena.numpy_allocator(heap):
                xs = [np.ones(n) for n in (1, 7, 100, 5000, 300000)]
            blocks = [heap.alloc(n) for n in (1, 16, 40, 1000, 70000, 3 << 20)]
            for b in blocks:
                memoryview(b)[:] = b"x" * len(b)
            del xs, blocks
            assert heap.check() >= 0
            heap.close()
        print("clean")
    """))
    assert r.returncode == 0 and r.stdout.strip() == "clean", r.stderr[-3000:]


VALGRIND = shutil.which("valgrind")


@pytest.mark.skipif(not (VALGRIND and SAN["valgrind"]) or SAN["address"],
                    reason="valgrind is not installed, or pyarena was built without its headers "
                           "(or with ASAN, which valgrind cannot run)")
def test_memcheck_sees_debug_heap_objects_as_malloc_blocks():
    code = program(PRELUDE, """
        [p] = _testing.capi_malloc(h, 40, 1)
        ctypes.memset(p + 40, 0x41, 1)            # one byte past the end
        b = h.alloc(24)
        q = b.address
        del b
        print(ctypes.string_at(q, 1) == b"\\xdd")   # a read after free
    """)
    # The interpreter itself, not a wrapper script (pyenv's shim is one).
    r = subprocess.run([VALGRIND, "--tool=memcheck", "--error-limit=no", sys.executable, "-c",
                        code], capture_output=True, text=True, timeout=300,
                       env=pyarena_env(PYTHONMALLOC="malloc", PYARENA_PREZERO="0",
                                       OPENBLAS_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "True"
    assert "is 0 bytes after a block of size 40 alloc'd" in r.stderr, r.stderr[-3000:]
    assert "is 0 bytes inside a block of size 24 free'd" in r.stderr
    assert "pyarena_mem_freelike" in r.stderr or "_malloc" in r.stderr
