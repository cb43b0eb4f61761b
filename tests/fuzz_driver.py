"""The child side of the fuzzer (tests/test_fuzz.py): hostile objects, the
step runner and the checks, and a fork server that runs batches.

A batch is a Python program written by the fuzzer, one statement a step:

    from fuzz_driver import *
    begin(globals())
    with step(0): h0 = Heap()
    with step(1, h0): v0 = fresh(h0.alloc(Idx(100, close(h0)), align=16), align=16)
    finish()

It runs the same way in a forked child of the fork server (serve(), below)
and pasted into a fresh interpreter (PYTHONPATH=src:tests python repro.py),
so a failure's reproducer is the batch itself.

What a step may do. ``step(k)`` lets a statement end normally or raise one
of ALLOWED (the documented exceptions of the API, plus Hostile, the
exception the fuzzer's own callbacks raise, which must propagate as it
is). A NameError for a program variable (v3, h1, ...) means an earlier step
that made it failed or was shrunk away: the step is skipped. Anything else
is a failure (FuzzFailure), and so is a signal death of the process.

What is checked. ``fresh(value)`` (an allocation whose memory must read as
zero) and ``keep(value)`` (any other allocation) record each value's byte
range and fill it with a byte pattern of its own; every step then checks:

- a new value's bytes do not overlap those of any live value, its address
  has the alignment it was asked for, and ``fresh`` values read zero;
- every live value still holds its pattern (nothing else wrote there);
- the MemStats identities of every heap the program can reach: heap_sys ==
  heap_inuse + heap_idle, heap_released <= heap_idle, heap_objects ==
  mallocs - frees, by_size adding up, no invalid frees, no counter past
  2**63 (a wrapped subtraction);
- an allocation from a heap closed, or an arena freed, before the call
  began raised instead of returning;
- no exception was reported as unraisable (a __dealloc__ or finalizer that
  failed) except the fuzzer's own Hostile, and pyarena warned of no bad
  free.

``finish()`` then runs ``_testing.check_heap`` on every heap that is not
closed, checks each live Block is owned by its heap, drops everything and
collects, and checks that every heap then holds no object.

Hostile objects (all reproducible from their source text): HInt, an int
subclass whose arithmetic and comparisons run an action; LyingInt, whose
comparisons and bitwise operators lie; Idx, an __index__ object that runs
an action and may answer differently each time; HBool, HStr, HSeq, HDtype
(.dtype property), HArrayLike (__array__), hostile_array (an ndarray
subclass whose properties run an action), bomb (cyclic garbage whose
finalizer runs an action when a collection finds it, which gc_every makes
frequent). Actions: close(h), free(a), reinit(a), release(h), drop(name),
collect(), boom() (raise Hostile), alloc_in(x), install(h), uninstall().
"""

from __future__ import annotations

import copy
import ctypes
import gc
import json
import os
import pickle
import select
import signal
import sys
import time
import traceback
import tracemalloc
import warnings

import numpy as np
from numpy.lib.array_utils import byte_bounds

import pyarena
from pyarena import (
    Arena, Block, Heap, reflect, alloc, zeros, empty, full, zeros_like, empty_like,
    full_like, stats, release, size_class, size_classes, default_heap,
    numpy_allocator, install_numpy_allocator, uninstall_numpy_allocator,
)
from pyarena import _testing
from pyarena._ndarray import set_data_handler

__all__ = [
    # what batches use besides pyarena's names
    "np", "ctypes", "copy", "pickle", "gc", "pyarena", "tracemalloc",
    "Arena", "Block", "Heap", "reflect", "alloc", "zeros", "empty", "full",
    "zeros_like", "empty_like", "full_like", "stats", "release", "size_class",
    "size_classes", "default_heap", "numpy_allocator", "install_numpy_allocator",
    "uninstall_numpy_allocator", "Chunk",
    "ALLOWED", "Hostile", "FuzzFailure",
    "begin", "step", "fresh", "keep", "scribble", "resize", "finish",
    "close", "free", "reinit", "release_", "drop", "collect", "boom", "alloc_in",
    "install", "uninstall", "nothing",
    "HInt", "LyingInt", "Idx", "HBool", "HStr", "HSeq", "HDtype", "HArrayLike",
    "hostile_array", "bomb", "gc_every", "SkipInitHeap", "SkipInitArena",
    "Point", "Pair", "Empty", "WithObject", "ctypes_buffer", "tamper", "view", "addr", "base_of",
    "check_stats",
]

Chunk = pyarena._arena._Chunk
# The base class of every ctypes instance (not exported by name).
_CDATA = next(c for c in ctypes.c_int.__mro__ if c.__name__ == "_CData")

# What a call may raise. ValueError, TypeError, OverflowError and
# MemoryError are the API's documented answers to bad arguments, closed
# heaps and sizes that cannot be had. BufferError is what a heap or arena
# answers when it cannot let go of memory still in use (Arena.free(strict=
# True), and a busy heap asked to close). IndexError and KeyError are
# NumPy's own answers while it parses shapes, dtypes and array-likes (an
# AxisError is an IndexError; a dtype dict without 'formats' a KeyError).
# Hostile is raised by the fuzzer's callbacks and must come out as it is.
# AttributeError, RuntimeError, SystemError and the rest are failures: a
# call with a bad argument must say what is wrong with it.


class Hostile(Exception):
    """Raised on purpose by a fuzzer callback (boom())."""


ALLOWED = (ValueError, TypeError, OverflowError, MemoryError, BufferError, IndexError,
           KeyError, Hostile)


class FuzzFailure(AssertionError):
    """A broken promise: an exception outside ALLOWED, a broken invariant,
    wrong data."""


# -- state of the running batch ---------------------------------------------

NS: dict = {}            # the batch's globals
RESULT_PATH = os.environ.get("PYARENA_FUZZ_RESULT")
_entries: dict = {}       # name -> _Entry of a live value
_pending: list = []       # values made in this step, not yet bound to a name
_failures: list = []      # failures seen inside callbacks (which pyarena may swallow)
_outcomes: list = []      # per step: (k, label, outcome)
_unraisable: list = []
_serial = 0
_cur = None               # the running step
_cb_count = 0


class _Entry:
    __slots__ = ("oid", "lo", "n", "byte", "what")

    def __init__(self, oid, lo, n, byte, what):
        self.oid, self.lo, self.n, self.byte, self.what = oid, lo, n, byte, what


def _fail(msg):
    """Record and raise a failure (recorded too, in case pyarena swallows it)."""
    err = FuzzFailure(msg)
    _failures.append(msg)
    raise err


def _unraisable_hook(u):
    if isinstance(u.exc_value, Hostile):
        return
    _unraisable.append(f"{u.exc_type.__name__}: {u.exc_value} (in {u.object!r})"
                       f"\n{''.join(traceback.format_tb(u.exc_traceback))}")


def _showwarning(message, category, filename, lineno, file=None, line=None):
    text = str(message)
    if text.startswith("pyarena:"):
        _unraisable.append(f"warning: {text}")


_warmed = False


def _warm():
    """Run once, with NumPy's default allocator, what makes NumPy fill its
    lazy module-level caches (numpy.ma's masked constant, matrix, datetime
    units): made under a batch's handler, they would stay in its heap for
    good and look like a leak."""
    global _warmed
    if _warmed:
        return
    _warmed = True
    prev = set_data_handler(None)
    try:
        np.ma.zeros(3) * 2
        np.ma.asarray([1.0]).mean()
        np.matrix([[1, 2]]) * 2
        np.zeros(3, "M8[s]") + np.timedelta64(5)
        np.datetime64("2020")
        np.dtype([("x", "f8"), ("n", "i2")])
        np.concatenate([np.ones(3), np.ones(2)])
        np.full(3, 7.0)
        np.ascontiguousarray(np.ones(3)[::-1])
    finally:
        set_data_handler(prev)


def begin(ns):
    """Start a batch whose globals are ns."""
    global NS
    _warm()
    NS = ns
    sys.unraisablehook = _unraisable_hook
    warnings.showwarning = _showwarning
    warnings.simplefilter("always", RuntimeWarning)
    # Collections start from zero counts, so that where they happen (and
    # with them the finalizers of bomb()) depends on the batch alone.
    gc.set_threshold(700, 10, 10)
    gc.collect()


class step:
    """Run one statement: ``with step(k[, receiver][, expect=TypeError]):``.

    receiver: the name of the Heap or Arena whose method the statement
    calls (a string); when it was closed (freed) before the statement began, any value the
    statement makes is a failure. expect: an exception the statement must
    raise (for arguments a call must refuse). allow: exceptions allowed
    beyond ALLOWED (pickle.PicklingError, for a copy of an object whose
    class pickle cannot find, such as a ctypes array type).
    """

    def __init__(self, k, receiver=None, expect=None, allow=()):
        self.k = k
        self.name = receiver
        self.receiver = None
        self.expect = expect
        self.allow = allow
        self.closed_before = False

    def __enter__(self):
        global _cur
        # The receiver is named, not passed: a name an earlier step failed
        # to bind must not raise outside the with statement.
        if self.name is not None:
            self.receiver = NS.get(self.name)
            self.closed_before = _is_closed(self.receiver)
        _cur = self
        _progress(f"step {self.k}")
        return self

    def __exit__(self, et, ev, tb):
        global _cur
        _cur = None
        outcome = "ok" if et is None else et.__name__
        suppress = False
        if et is not None:
            if issubclass(et, FuzzFailure):
                return False
            if issubclass(et, NameError) and _is_program_name(ev):
                outcome, suppress = "skipped", True
            elif self.expect is not None and issubclass(et, self.expect):
                suppress = True
            elif issubclass(et, ALLOWED + tuple(self.allow)) and self.expect is None:
                suppress = True
        _outcomes.append((self.k, outcome))
        if et is not None and not suppress:
            detail = "".join(traceback.format_exception(et, ev, tb))
            _pending.clear()
            _fail(f"step {self.k}: unexpected {et.__name__}: {ev}\n{detail}")
        if et is None and self.expect is not None:
            _pending.clear()
            _fail(f"step {self.k}: should have raised {self.expect.__name__}")
        _bind_pending()
        check_now(f"after step {self.k}")
        return suppress


def _is_program_name(ev):
    name = getattr(ev, "name", None)
    return isinstance(name, str) and len(name) >= 2 and name[0] in _PROGRAM_PREFIXES \
        and name[1:].isdigit()


# Names of a batch's variables: h heaps, a arenas, b Blocks, v arrays, c
# ctypes values, m anything else.
_PROGRAM_PREFIXES = "habvcm"


def _is_closed(x):
    if isinstance(x, Heap):
        return x.closed
    if isinstance(x, Arena):
        try:
            return x.freed
        except Exception:  # noqa: BLE001 - a half-built arena
            return False
    return False


def _progress(text):
    # One line per step to stderr, so that a signal death shows where it
    # happened (with faulthandler's traceback after it).
    if RESULT_PATH is not None:
        os.write(2, (text + "\n").encode())


# -- values: ranges, patterns, checks ---------------------------------------

def _range(v):
    """(first byte, nbytes, what) of an allocated value."""
    if isinstance(v, Block):
        return v.address, v.nbytes, f"Block {v.nbytes} B"
    if isinstance(v, np.ndarray):
        if v.nbytes == 0:
            return 0, 0, "empty array"
        lo, hi = byte_bounds(v)
        return lo, hi - lo, f"array {v.shape} {v.dtype}"
    if isinstance(v, _CDATA):
        return ctypes.addressof(v), ctypes.sizeof(v), f"ctypes {type(v).__name__}"
    return None


_BIG = 1 << 20
_SAMPLE = 64 << 10


def _regions(lo, n):
    """The parts of [lo, lo+n) written and checked: all of a value up to
    1 MiB; beyond, its first and last 64 KiB and eight pages between."""
    if n <= _BIG:
        return [(lo, n)]
    out = [(lo, _SAMPLE), (lo + n - _SAMPLE, _SAMPLE)]
    for k in range(1, 9):
        a = (lo + k * (n // 9)) & ~4095
        out.append((a, 4096))
    return out


def _pattern_byte(serial):
    b = 1 + (serial * 37) % 254
    return b if b != 0xA5 else 0x5A


def _reads(lo, n, byte):
    """None if every checked byte of [lo, lo+n) is byte, else (address,
    byte found) of the first that is not."""
    for a, m in _regions(lo, n):
        got = ctypes.string_at(a, m)
        if got.count(byte) != m:
            i = next(i for i, c in enumerate(got) if c != byte)
            return a + i, got[i]
    return None


def _fill(lo, n, byte):
    for a, m in _regions(lo, n):
        ctypes.memset(a, byte, m)


def _live():
    """name -> _Entry of the values still bound to their name."""
    out = {}
    for name, e in list(_entries.items()):
        v = NS.get(name)
        if v is None or id(v) != e.oid:
            del _entries[name]
            continue
        out[name] = e
    return out


def _check_new(v, zero, align, by_receiver=True):
    r = _range(v)
    if r is None:
        _fail(f"an allocation returned {type(v).__name__}, not a Block, array or ctypes value")
    lo, n, what = r
    cur = _cur
    # (An arena freed before the call but initialised again during it, by
    # a callback calling __init__, is open again: no rule broken.)
    if by_receiver and cur is not None and cur.closed_before and _is_closed(cur.receiver):
        _fail(f"{what} allocated from {cur.name} ({cur.receiver!r}), closed (or freed) "
              "before the call")
    if n == 0:
        return None
    if align is None:
        align = _natural_align(v, n)
    if lo % align:
        _fail(f"{what} at {lo:#x} is not {align}-aligned")
    if zero:
        bad = _reads(lo, n, 0)
        if bad is not None:
            _fail(f"{what} at {lo:#x} should read zero: byte {bad[1]:#x} at {bad[0]:#x} "
                  f"(offset {bad[0] - lo})")
    for name, e in _live().items():
        if lo < e.lo + e.n and e.lo < lo + n:
            _fail(f"{what} [{lo:#x}, {lo + n:#x}) overlaps live {name} ({e.what}) "
                  f"[{e.lo:#x}, {e.lo + e.n:#x})")
    for p in _pending:
        pr = _range(p[0])
        if pr and pr[1] and lo < pr[0] + pr[1] and pr[0] < lo + n:
            _fail(f"{what} [{lo:#x}, {lo + n:#x}) overlaps {pr[2]} made in the same step")
    return lo, n, what


def _natural_align(v, n):
    if isinstance(v, Block):
        # Tiny values (1..15 bytes) are packed at 2/4/8 offsets or none.
        return 16 if n >= 16 else 1
    if isinstance(v, np.ndarray):
        return max(16, v.dtype.alignment)
    return ctypes.alignment(type(v))


def _register(v, zero, align, numpy=False):
    global _serial
    if numpy and isinstance(v, np.generic):
        return v              # NumPy answered a scalar (of a 0-d operand): no memory of ours
    r = _check_new(v, zero, align)
    if r is None:
        return v
    lo, n, what = r
    _serial += 1
    byte = _pattern_byte(_serial)
    if isinstance(v, np.ndarray) and _has_unicode(v.dtype):
        # No pattern: uniform non-zero bytes are no valid UCS4 character,
        # and NumPy itself raises SystemError reading one. The range is
        # still checked for overlap; its bytes are checked to stay zero.
        byte = 0
    _fill(lo, n, byte)
    _pending.append((v, lo, n, byte, what))
    return v


def _has_unicode(dt):
    if dt.kind == "U":
        return True
    if dt.subdtype is not None:
        return _has_unicode(dt.subdtype[0])
    return any(_has_unicode(dt.fields[f][0]) for f in dt.names or ())


def fresh(v, align=None, numpy=False):
    """An allocation whose memory must read as zero. numpy: made by a NumPy
    expression, which may answer a scalar instead of an array."""
    return _register(v, True, align, numpy)


def keep(v, align=None, numpy=False):
    """An allocation whose contents are not promised (empty, full, ...)."""
    return _register(v, False, align, numpy)


def _is_value_name(name):
    return name[:1] in "bcv" and name[1:].isdigit() or name.startswith("cb")


def _bind_pending():
    """Values made in this step are tracked under the names they were
    bound to; a value bound to no name has died already."""
    for v, lo, n, byte, what in _pending:
        for name, x in NS.items():
            if x is v and _is_value_name(name):
                _entries[name] = _Entry(id(v), lo, n, byte, what)
    _pending.clear()


def _entry_of(v):
    for name, e in _live().items():
        if e.oid == id(v):
            return name, e
    return None, None


def scribble(v):
    """Write 0xA5 over every buffer reachable from v's keep-alive objects
    (an array's .base, a ctypes value's _objects), then restore v's own
    bytes: legal Python, which must not reach any other value's memory."""
    windows = []
    base = getattr(v, "base", None) if isinstance(v, np.ndarray) else None
    if base is not None:
        windows.append(base)
    if isinstance(v, _CDATA):
        objs = v._objects
        if isinstance(objs, dict):
            windows.extend(objs.values())
        elif objs is not None:
            windows.append(objs)
    for w in windows:
        try:
            mv = memoryview(w)
        except TypeError:
            continue
        if mv.readonly or mv.nbytes == 0:
            continue
        mv = mv.cast("B") if mv.c_contiguous else mv
        if mv.ndim == 1 and mv.format == "B":
            mv[:] = b"\xa5" * mv.nbytes
    name, e = _entry_of(v)
    if e is not None:
        _fill(e.lo, e.n, e.byte)


def resize(v, n):
    """ndarray.resize(n) of a live value (NumPy reallocates through the
    array's handler): its bytes up to the smaller size must survive and
    the new tail must read as zero."""
    if not isinstance(v, np.ndarray):
        raise TypeError(f"resize of a {type(v).__name__}")   # the helper is for arrays
    name, e = _entry_of(v)
    old_n = v.nbytes
    v.resize(n, refcheck=False)
    if e is None:
        return
    r = _range(v)
    lo, m, what = r if r else (0, 0, "")
    keep_n = min(old_n, m)
    # The pattern lies where _fill wrote it: the old value's regions, at
    # the same offsets from the (maybe moved) start.
    for a, k in _regions(e.lo, e.n):
        off = a - e.lo
        k = min(k, keep_n - off)
        if k <= 0:
            continue
        bad = _reads(lo + off, k, e.byte)
        if bad is not None:
            _fail(f"resize lost the contents of {name}: byte {bad[1]:#x} at offset "
                  f"{bad[0] - lo}")
    if m > keep_n:
        bad = _reads(lo + keep_n, m - keep_n, 0)
        if bad is not None:
            _fail(f"resize of {name}: the new tail reads {bad[1]:#x} at offset {bad[0] - lo}")
    del _entries[name]
    if m:
        for other, o in _live().items():
            if lo < o.lo + o.n and o.lo < lo + m:
                _fail(f"{name} resized to [{lo:#x}, {lo + m:#x}) overlaps live {other}")
        _fill(lo, m, e.byte)
        _entries[name] = _Entry(id(v), lo, m, e.byte, what)


class _DefaultNumpy:
    """The checks' own NumPy work goes to NumPy's default allocator."""

    def __enter__(self):
        self.prev = set_data_handler(None)
        self.gc = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc):
        set_data_handler(self.prev)
        if self.gc:
            gc.enable()
        return False


def _heaps():
    """Heaps the batch can reach: its variables and the heaps of its Blocks."""
    seen = {}
    for name, x in list(NS.items()):
        if isinstance(x, Heap):
            seen[id(x)] = x
        elif isinstance(x, Block) and x.heap is not None:
            seen[id(x.heap)] = x.heap
    return list(seen.values())


_U63 = 1 << 63


def check_stats(s, who):
    """The MemStats identities."""
    for f in ("heap_alloc", "heap_sys", "heap_idle", "heap_inuse", "heap_released",
              "heap_objects", "mallocs", "frees", "total_alloc", "metadata_sys"):
        x = getattr(s, f)
        if not 0 <= x < _U63:
            _fail(f"{who}: {f} = {x} (wrapped?)")
    if s.heap_sys != s.heap_inuse + s.heap_idle:
        _fail(f"{who}: heap_sys {s.heap_sys} != heap_inuse {s.heap_inuse} + heap_idle "
              f"{s.heap_idle}")
    if s.heap_released > s.heap_idle:
        _fail(f"{who}: heap_released {s.heap_released} > heap_idle {s.heap_idle}")
    if s.heap_objects != s.mallocs - s.frees:
        _fail(f"{who}: heap_objects {s.heap_objects} != mallocs {s.mallocs} - frees {s.frees}")
    if len(s.by_size) != pyarena.NUM_SIZE_CLASSES:
        _fail(f"{who}: by_size has {len(s.by_size)} classes")
    if sum(c.mallocs for c in s.by_size) != s.mallocs or \
            sum(c.frees for c in s.by_size) != s.frees:
        _fail(f"{who}: by_size does not add up to mallocs/frees")
    if s.heap_alloc > s.heap_inuse and s.heap_sys:
        _fail(f"{who}: heap_alloc {s.heap_alloc} > heap_inuse {s.heap_inuse}")
    if s.invalid_frees:
        _fail(f"{who}: {s.invalid_frees} invalid frees (pyarena freed what it did not hold)")


def check_now(where):
    """The checks run after every step."""
    if _failures:
        _fail(f"{where}: a failure inside a callback: {_failures[0]}")
    if _unraisable:
        _fail(f"{where}: unraisable exception or warning: {_unraisable[0]}")
    with _DefaultNumpy():
        for name, e in _live().items():
            bad = _reads(e.lo, e.n, e.byte)
            if bad is not None:
                _fail(f"{where}: live {name} ({e.what} at {e.lo:#x}) was overwritten: "
                      f"byte {bad[1]:#x} at offset {bad[0] - e.lo}")
        for h in _heaps():
            try:
                s = h.stats()
            except Exception as exc:  # noqa: BLE001 - any exception is a failure here
                _fail(f"{where}: {h!r}.stats() raised {type(exc).__name__}: {exc}")
            check_stats(s, f"{where}: {h!r}")


def finish():
    """The end of a batch: a collection (bombs go off), the checks, then
    everything dropped and every heap found empty."""
    global _cur
    _cur = None
    _progress("finish")
    gc.set_threshold(700, 10, 10)
    gc.collect()
    check_now("finish")
    uninstall_all()
    heaps = _heaps() + [default_heap()]
    with _DefaultNumpy():
        for name, e in _live().items():
            v = NS[name]
            if isinstance(v, Block) and v.nbytes and v.heap is not None:
                if not v.heap.owns(v.address):
                    _fail(f"finish: live {name} ({e.what}) is not live in its heap")
        v = None                # the loop must not keep the last value alive
        for h in heaps:
            check_stats(h.stats(), f"finish: {h!r}")
            if not h.closed:
                try:
                    _testing.check_heap(h)
                except AssertionError as exc:
                    _fail(f"finish: check_heap({h!r}): {exc}")
    # Drop everything the batch made; then no heap holds an object.
    for name in [n for n in NS if n[:1] in _PROGRAM_PREFIXES and n[1:].isdigit()
                 or n.startswith("cb")]:
        del NS[name]
    _entries.clear()
    gc.collect()
    gc.collect()
    with _DefaultNumpy():
        for h in heaps:
            if h.closed:
                continue
            h.release()
            s = h.stats()
            check_stats(s, f"finish, all dropped: {h!r}")
            if s.heap_objects:
                _fail(f"finish: {h!r} holds {s.heap_objects} objects after everything "
                      "was dropped")
            try:
                _testing.check_heap(h)
            except AssertionError as exc:
                _fail(f"finish, all dropped: check_heap({h!r}): {exc}")
    _write_result({"status": "ok", "outcomes": _outcomes})
    if RESULT_PATH is None:
        print(f"fuzz batch OK: {len(_outcomes)} steps")


def uninstall_all():
    set_data_handler(None)


def _write_result(obj):
    if RESULT_PATH is not None:
        with open(RESULT_PATH, "w") as f:
            json.dump(obj, f)


# -- actions that callbacks run ---------------------------------------------

class _Act:
    """A callback action; its repr is the source that makes it."""

    def __init__(self, src, fn):
        self.src, self.fn = src, fn

    def __call__(self):
        # An action refused with a documented exception (close() of a busy
        # heap, say) lets the interrupted call go on; Hostile is meant to
        # come out of it.
        try:
            self.fn()
        except Hostile:
            raise
        except ALLOWED:
            pass

    def __repr__(self):
        return self.src


def nothing():
    return _Act("nothing()", lambda: None)


def _name_of(x):
    for name, y in NS.items():
        if y is x and not name.startswith("_"):
            return name
    return repr(x)


def close(h):
    return _Act(f"close({_name_of(h)})", h.close)


def free(a):
    return _Act(f"free({_name_of(a)})", a.free)


def reinit(a):
    return _Act(f"reinit({_name_of(a)})", a.__init__)


def release_(h):
    return _Act(f"release_({_name_of(h)})", h.release)


def drop(name):
    return _Act(f"drop({name!r})", lambda: NS.pop(name, None))


def collect():
    return _Act("collect()", gc.collect)


def _boom():
    raise Hostile("boom")


def boom():
    return _Act("boom()", _boom)


def alloc_in(x):
    """Allocate from x (a Heap or Arena) inside the callback and keep the
    value, which must then not overlap what the interrupted call returns."""
    def run():
        global _cb_count
        _cb_count += 1
        name = f"cb{_cb_count}"
        v = x.zeros(24, "u1")
        NS[name] = v
        r = _check_new(v, True, None, by_receiver=False)
        if r is not None:
            global _serial
            _serial += 1
            byte = _pattern_byte(_serial)
            _fill(r[0], r[1], byte)
            _entries[name] = _Entry(id(v), r[0], r[1], byte, r[2] + " (callback)")
    return _Act(f"alloc_in({_name_of(x)})", run)


def install(h):
    return _Act(f"install({_name_of(h)})", lambda: install_numpy_allocator(h))


def uninstall():
    return _Act("uninstall()", uninstall_numpy_allocator)


# -- hostile objects ---------------------------------------------------------

_INT_HOOKS = ("__index__", "__int__", "__float__", "__bool__", "__hash__", "__eq__",
              "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__add__", "__radd__",
              "__sub__", "__rsub__", "__mul__", "__rmul__", "__floordiv__", "__rfloordiv__",
              "__mod__", "__rmod__", "__and__", "__rand__", "__or__", "__ror__", "__xor__",
              "__rxor__", "__lshift__", "__rlshift__", "__rshift__", "__rrshift__",
              "__neg__", "__pos__", "__abs__", "__invert__", "__truediv__")


class HInt(int):
    """An int whose every dunder (arithmetic, comparison, __index__, hash)
    runs act first and then answers as the int would."""

    def __new__(cls, value, act=None):
        self = int.__new__(cls, value)
        self.act = act
        return self

    def __repr__(self):
        return f"HInt({int(self)}, {self.act!r})"


def _hooked(name):
    base = getattr(int, name)

    def method(self, *args):
        if self.act is not None:
            self.act()
        return base(self, *args)
    method.__name__ = name
    return method


for _n in _INT_HOOKS:
    setattr(HInt, _n, _hooked(_n))


class LyingInt(int):
    """An int whose comparisons and & | answer what a validator hopes to
    hear: x < y, x <= y, x > y, x >= y are all False, x & y and x | y are
    0. Only the C value (PyLong_AsSsize_t) tells the truth."""

    def __repr__(self):
        return f"LyingInt({int(self)})"

    def __lt__(self, o): return False
    def __le__(self, o): return False
    def __gt__(self, o): return False
    def __ge__(self, o): return False
    def __and__(self, o): return 0
    __rand__ = __and__
    def __or__(self, o): return 0
    __ror__ = __or__
    __hash__ = int.__hash__


class Idx:
    """An object with __index__ only. values: an int, or a list answered in
    turn (the last one repeats): an index that changes between reads."""

    def __init__(self, values, act=None):
        self.values = values if isinstance(values, list) else [values]
        self.act = act
        self.reads = 0

    def __index__(self):
        if self.act is not None:
            self.act()
        v = self.values[min(self.reads, len(self.values) - 1)]
        self.reads += 1
        if isinstance(v, BaseException):
            raise v
        return v

    def __repr__(self):
        vals = self.values[0] if len(self.values) == 1 else self.values
        return f"Idx({vals!r}, {self.act!r})"


class HBool:
    """__bool__ runs act and answers truth (a list: answered in turn)."""

    def __init__(self, truth, act=None):
        self.truth = truth if isinstance(truth, list) else [truth]
        self.act = act
        self.reads = 0

    def __bool__(self):
        if self.act is not None:
            self.act()
        v = self.truth[min(self.reads, len(self.truth) - 1)]
        self.reads += 1
        return v

    def __repr__(self):
        return f"HBool({self.truth!r}, {self.act!r})"


class HStr(str):
    """A str whose comparisons, hash, upper/lower and len run act."""

    def __new__(cls, s, act=None):
        self = str.__new__(cls, s)
        self.act = act
        return self

    def _a(self):
        if self.act is not None:
            self.act()

    def __eq__(self, o): self._a(); return str.__eq__(self, o)
    def __ne__(self, o): self._a(); return str.__ne__(self, o)
    def __hash__(self): self._a(); return str.__hash__(self)
    def __len__(self): self._a(); return str.__len__(self)
    def upper(self): self._a(); return str.upper(self)
    def lower(self): self._a(); return str.lower(self)

    def __repr__(self):
        return f"HStr({str(self)!r}, {self.act!r})"


class HSeq:
    """A sequence (a shape) whose __len__, __getitem__ and __iter__ run act."""

    def __init__(self, items, act=None):
        self.items, self.act = list(items), act

    def _a(self):
        if self.act is not None:
            self.act()

    def __len__(self):
        self._a()
        return len(self.items)

    def __getitem__(self, i):
        self._a()
        return self.items[i]

    def __iter__(self):
        self._a()
        return iter(list(self.items))

    def __repr__(self):
        return f"HSeq({self.items!r}, {self.act!r})"


class HDtype:
    """Anything with a .dtype attribute is a dtype to numpy.dtype(): this
    one's property runs act."""

    def __init__(self, dt, act=None):
        self.dt, self.act = dt, act

    @property
    def dtype(self):
        if self.act is not None:
            self.act()
        return np.dtype(self.dt)

    def __repr__(self):
        return f"HDtype({self.dt!r}, {self.act!r})"


class HArrayLike:
    """An array-like whose __array__ runs act."""

    def __init__(self, data, act=None):
        self.data, self.act = data, act

    def __array__(self, dtype=None, copy=None):
        if self.act is not None:
            self.act()
        return np.asarray(self.data, dtype=dtype)

    def __repr__(self):
        return f"HArrayLike({self.data!r}, {self.act!r})"


def hostile_array(arr, act, *props):
    """A view of arr as an ndarray subclass whose properties props
    (nbytes, __array_interface__, dtype, shape, strides, flags, ndim, ...)
    run act before answering."""
    def prop(name):
        base = getattr(np.ndarray, name)

        def get(self):
            act()
            return base.__get__(self)
        return property(get)
    cls = type("HostileArray", (np.ndarray,), {p: prop(p) for p in props})
    return np.asarray(arr).view(cls)


class _Bomb:
    def __init__(self, act):
        self.act = act
        self.me = self            # a cycle: only a collection frees it

    def __del__(self):
        self.act()


def bomb(act):
    """Cyclic garbage whose finalizer runs act when a collection finds it."""
    _Bomb(act)


def gc_every(n):
    """A generation-0 collection every n allocations of tracked objects, so
    that finalizers run at arbitrary points inside pyarena's calls."""
    gc.set_threshold(n, 1000, 1000)


def SkipInitHeap(*args, **kwargs):
    # Heap is final (issue 10: no vtable on the fast paths), so the closest
    # thing to a subclass that skips __init__ is a bare __new__.
    return Heap.__new__(Heap)


class SkipInitArena(Arena):
    def __init__(self, *args, **kwargs):
        pass


class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_double), ("y", ctypes.c_double), ("n", ctypes.c_int32)]


class Pair(ctypes.Union):
    _fields_ = [("i", ctypes.c_int64), ("d", ctypes.c_double), ("b", ctypes.c_char * 8)]


class Empty(ctypes.Structure):
    _fields_ = []


class WithObject(ctypes.Structure):
    _fields_ = [("x", ctypes.c_double), ("o", ctypes.py_object)]


def ctypes_buffer(kind):
    """A ctypes object that exports a buffer without strides."""
    if kind == 0:
        return (ctypes.c_int * 5)()
    if kind == 1:
        return Point()
    if kind == 2:
        return ((ctypes.c_double * 3) * 2)()
    return ctypes.c_double(1.5)


def base_of(v):
    """What keeps a value's memory alive, as Python can see it: an array's
    .base, a ctypes value's _objects, a memoryview's .obj."""
    if isinstance(v, np.ndarray):
        return v.base
    if isinstance(v, _CDATA):
        return v._objects
    if isinstance(v, memoryview):
        return v.obj
    return None


def addr(v):
    """The first byte's address of a Block, an array or a ctypes value."""
    r = _range(v)
    if r is None:
        raise TypeError(f"no address for {type(v).__name__}")
    return r[0]


def view(v, how):
    """A view of a value that keeps it alive: how 0 every other element
    (byte), 1 reversed, 2 empty, 3 the transpose or a cast, 4 all but the
    first."""
    if isinstance(v, np.ndarray):
        if v.ndim == 0:
            return v[...]
        return (v[::2], v[::-1], v[1:1], v.T, v[1:])[how]
    mv = memoryview(v)
    if mv.ndim == 0:
        return mv
    return (mv[::2], mv[::-1], mv[1:1], mv.cast("B") if mv.c_contiguous else mv, mv[1:])[how]


def tamper(a, field, value):
    """Rebuild arena a's state through the pickle protocol with one field
    changed (field: index into the state tuple of Arena.__reduce_ex__)."""
    fn, args, state = a.__reduce_ex__(2)
    state = list(state)
    state[field] = value
    a.__setstate_cython__(tuple(state))
    return a


# -- the fork server ---------------------------------------------------------

def _run_child(source, result_path, out_fd, as_limit):
    """In the forked child: run one batch, then exit without cleanup."""
    global RESULT_PATH
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.setsid()
    code = 0
    try:
        import faulthandler
        import resource
        faulthandler.enable(file=sys.stderr, all_threads=True)
        if as_limit:
            resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
        RESULT_PATH = result_path
        ns = {"__name__": "__fuzz_batch__"}
        exec(compile(source, "<batch>", "exec"), ns)
    except FuzzFailure as exc:
        _write_result({"status": "fail", "message": str(exc), "outcomes": _outcomes})
        code = 3
    except BaseException as exc:  # noqa: BLE001 - the harness's own error
        _write_result({"status": "error", "message": "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)),
            "outcomes": _outcomes})
        code = 4
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _vm_size():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) << 10
    return 0


def run_forked(source, timeout, as_budget=0):
    """Fork, run source in the child, and describe how it ended. as_budget:
    address space the child may map beyond what the server has (0: no
    limit)."""
    import tempfile
    as_limit = _vm_size() + as_budget if as_budget else 0
    with tempfile.TemporaryDirectory(prefix="pyarena-fuzz-") as d:
        result_path = os.path.join(d, "result.json")
        out_path = os.path.join(d, "out.txt")
        out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT, 0o600)
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _run_child(source, result_path, out_fd, as_limit)
        os.close(out_fd)
        status = _wait(pid, timeout)
        elapsed = time.monotonic() - t0
        with open(out_path, errors="replace") as f:
            output = f.read()
        res = {}
        if os.path.exists(result_path):
            try:
                with open(result_path) as f:
                    res = json.load(f)
            except ValueError:
                res = {}
    if status is None:
        res.update(status="timeout")
    elif os.WIFSIGNALED(status):
        res.update(status="signal", signal=os.WTERMSIG(status))
    elif os.WEXITSTATUS(status) not in (0, 3, 4):
        res.update(status="error", exitcode=os.WEXITSTATUS(status))
    elif not res:
        res.update(status="error", message="no result written")
    res["output"] = output[-20000:]
    res["elapsed"] = elapsed
    return res


def _wait(pid, timeout):
    deadline = time.monotonic() + timeout
    try:
        pfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pfd = None
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.killpg(pid, signal.SIGKILL) if _pgid_ok(pid) else os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return None
            if pfd is not None:
                select.select([pfd], [], [], left)
            else:
                time.sleep(0.002)
            got, status = os.waitpid(pid, os.WNOHANG)
            if got == pid:
                return status
    finally:
        if pfd is not None:
            os.close(pfd)


def _pgid_ok(pid):
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def serve():
    """Read batches from stdin, run each in a forked child, answer on stdout.
    Protocol: a line with the byte length, then that many bytes of JSON,
    both ways."""
    _warm()
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while True:
        line = inp.readline()
        if not line:
            return
        req = json.loads(inp.read(int(line)))
        res = run_forked(req["source"], req.get("timeout", 60), req.get("as_budget", 0))
        data = json.dumps(res).encode()
        out.write(b"%d\n" % len(data))
        out.write(data)
        out.flush()


_ADDR_NO_RANDOMIZE = 0x0040000


def exec_without_aslr(argv):
    """Re-exec argv with address space randomisation off (personality
    ADDR_NO_RANDOMIZE, as setarch -R does), so that a batch whose outcome
    depends on addresses (an alignment, a neighbour) behaves the same from
    run to run. Returns False, and execs nothing, where that is refused."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        cur = libc.personality(0xFFFFFFFF)
        if cur == -1:
            return False
        if not cur & _ADDR_NO_RANDOMIZE:
            if libc.personality(cur | _ADDR_NO_RANDOMIZE) == -1:
                return False
            os.execv(argv[0], argv)
    except OSError:
        return False
    return True


def serve_without_aslr():
    exec_without_aslr([sys.executable, "-c",
                       "import fuzz_driver; fuzz_driver.serve_without_aslr()"])
    serve()


if __name__ == "__main__":
    serve()
