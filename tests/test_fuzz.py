"""Fuzzer: random calls of pyarena's whole public API with hostile arguments.

Hypothesis writes batches: short Python programs (see fuzz_driver.py for
their form and for every check they make) that call Heap, Arena, Block,
reflect and the module functions with arguments drawn from hostile
strategies: int subclasses whose arithmetic closes the heap, __index__
objects that answer differently each time, huge, negative and wrong-typed
numbers, buffers of every kind, ndarray subclasses whose properties run
code, closed heaps, freed and half-built arenas, copies and pickles,
finalizers that run mid-call, unknown keyword arguments. Each batch runs in
a forked child of a fork server (fuzz_driver.serve), so that a segfault is
a test failure; its reproducer is the batch itself, printed with the seed,
and rerun in a fresh interpreter to confirm.

A call may return or raise one of fuzz_driver.ALLOWED (ValueError,
TypeError, OverflowError, MemoryError, BufferError, IndexError, KeyError,
and the callbacks' own Hostile); anything else fails, and so does any
signal, any broken MemStats identity or check_heap invariant, a value that
should read zero and does not, two live values that overlap, a live value
whose bytes changed under it.

Budget. The default runs in CI (the file in about a minute on two cores).
Environment variables make it longer:

    PYARENA_FUZZ_EXAMPLES=5000   batches for the main test (default 150;
                                 each aimed test runs a sixth of it)
    PYARENA_FUZZ_STEPS=40        steps in a batch, on average (default 20)
    PYARENA_FUZZ_SEED=random     or a number (default 8): hypothesis' seed
    PYARENA_FUZZ_SHRINK=60       seconds spent minimising a failure (default 8)

    PYARENA_FUZZ_EXAMPLES=5000 PYARENA_FUZZ_SEED=random \\
        PYTHONPATH=src python -m pytest -q -p no:cacheprovider tests/test_fuzz.py

Aimed tests. Each argument kind that once reached a defect (issue 8's
seven, and those this fuzzer found beyond it, N1..N4) is listed in AIMED
with the defect it hit; test_fuzz_aimed[kind] starts every batch with a
scenario aimed at it, and test_fuzz_api draws every kind at random (all
but "gib", whose 1 GiB values need their own address-space budget). A
defect found next gets its kind here, marked xfail in OPEN while it is
open (strict=False, no shrinking, a 5 s batch timeout); when it is fixed
the test passes (XPASS), and the kind leaves OPEN.

Determinism. The fork server runs with address randomisation off (as
setarch -R), and each batch starts its collector from zero, so a seed
gives the same batches and the same outcomes from run to run; a
reproducer pasted into a normal interpreter may need a few runs where the
outcome depends on an address (an alignment, say).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import hypothesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import engine

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fuzz_driver  # noqa: E402

EXAMPLES = int(os.environ.get("PYARENA_FUZZ_EXAMPLES", "150"))
STEPS = int(os.environ.get("PYARENA_FUZZ_STEPS", "20"))
_seed = os.environ.get("PYARENA_FUZZ_SEED", "8")
SEED = None if _seed == "random" else int(_seed)
SHRINK_SECONDS = float(os.environ.get("PYARENA_FUZZ_SHRINK", "8"))
BATCH_TIMEOUT = 30.0
# Address space a batch may map beyond the fork server's own: enough for a
# few heaps with 64 MiB values, not for a value of 1 GiB (issue 8 defect 6,
# the gib feature, which gets 6 GiB); and never the machine's memory. An
# mmap past it fails, which pyarena must report as MemoryError.
AS_BUDGET = 900 << 20
AS_BUDGET_GIB = 6 << 30


# ---------------------------------------------------------------------------
# Strategies. Each returns Python source text; a step is (label, source).

def pick(*xs):
    return st.sampled_from(xs)


def _same(x):
    return x


def one(*strategies):
    """st.one_of with each alternative weighted alike. Hypothesis flattens
    nested one_of into one list of leaves, each as likely as the next, so
    a group with many leaves would crowd out the rest; a mapped strategy
    is not flattened."""
    return st.one_of(*[s.map(_same) for s in strategies])


class Grammar:
    """The strategies for one set of features (argument kinds that may be
    drawn): the kinds of AIMED, each once a defect."""

    def __init__(self, features):
        self.f = frozenset(features)

    def on(self, name):
        return name in self.f

    # -- callback actions ----------------------------------------------------

    def acts(self, closing, finalizer=False):
        """Actions a callback runs. closing: may it close a heap or free an
        arena mid-call? finalizer: for bomb(), whose action runs inside a
        collection. Not there: install() and uninstall(), which set
        context variables; one set inside a collection that runs inside
        another set is CPython's own use-after-free (python/cpython#148891,
        open; SIGSEGV in 3.10 and 3.11), not pyarena's."""
        quiet = pick("nothing()", "collect()", "boom()", "drop('v0')", "drop('v1')",
                     "alloc_in(h0)", "alloc_in(a0)", "alloc_in(a1)", "release_(h0)",
                     *(() if finalizer else ("install(h0)", "uninstall()")))
        if not closing:
            return quiet
        return one(quiet, pick("close(h0)", "close(h1)", "free(a0)", "free(a1)",
                                     "reinit(a0)", "close(default_heap())"))

    # -- numbers -----------------------------------------------------------

    def sizes(self):
        return pick("0", "1", "8", "16", "100", "7", "15", "17", "24", "1000", "4096",
                    "8192", "32768", "32769", "100000", "(1 << 20) + 3", "(2 << 20) + 1",
                    "(8 << 20) + 5", "64 << 20")

    def ints(self, closing=True):
        """A size or count: plain, wrong-typed, huge, negative, hostile."""
        plain = self.sizes()
        odd = pick("-1", "-(1 << 63)", "1 << 63", "1 << 64", "2 ** 100", "1 << 47",
                   "(1 << 47) + 1", "1 << 40", "True", "False", "3.0", "'8'", "None", "b'8'",
                   "[8]", "object()", "np.int64(64)", "np.uint64(2 ** 63)", "np.int8(-3)",
                   "np.array(16)", "np.array([16])", "np.float64(8.0)", "np.bool_(True)",
                   "Idx('x')", "Idx(Hostile('index'))", "Idx(-5)", "Idx(1 << 70)")
        hostile = one(
            st.builds(lambda n, a: f"HInt({n}, {a})", plain, self.acts(closing)),
            st.builds(lambda n, a: f"Idx({n}, {a})", plain, self.acts(closing)),
            st.builds(lambda n: f"LyingInt({n})", pick("-1", "16", "100", "1 << 62")),
        )
        out = [plain, odd, hostile]
        if self.on("liar"):
            out.append(st.builds(lambda a, b: f"Idx([{a}, {b}])", plain, plain))
        if self.on("gib"):
            out.append(pick("1 << 30", "(1 << 30) + 8192", "(1 << 31) + 5"))
        return one(*out)

    def shapes(self, closing=True):
        small = pick("3", "(3, 4)", "[2, 3]", "()", "(0, 5)", "(2, 1, 2)", "17", "1000", "v0",
                     "b0", "c0")
        odd = pick("(2, -1)", "(1 << 32, 1 << 32)", "np.array([2, 3])", "(i for i in (2, 3))",
                   "'abc'", "(2.0,)", "(True,)", "tuple(range(65))", "(1,) * 64",
                   "[[2]]", "None", "(np.int32(3), np.uint8(2))", "{3: 4}")
        hostile = one(
            st.builds(lambda a: f"HSeq([3, 4], {a})", self.acts(closing)),
            st.builds(lambda n, a: f"(HInt({n}, {a}), 2)", self.sizes(), self.acts(closing)),
            st.builds(lambda n, a: f"Idx({n}, {a})", self.sizes(), self.acts(closing)),
        )
        out = [small, st.builds(lambda n: n, self.ints(closing)), odd, hostile]
        if self.on("liar"):
            out.append(st.builds(lambda a, b: f"(Idx([{a}, {b}]),)", self.sizes(), self.sizes()))
        return one(*out)

    def dtypes(self, closing=True, sized=False):
        """sized: no zero-size dtype (full and full_like: NumPy's own
        numpy.full(1 << 62, 0, dtype=[]) fills 2**62 empty items, a hang)."""
        if sized:
            return self.dtypes(closing).filter(lambda d: d not in ZERO_SIZE_DTYPES)
        good = pick("'u1'", "'f8'", "float", "'i2'", "'<i4'", "'>f8'", "'c16'", "'g'", "'?'",
                    "'S'", "'S5'", "'U3'", "'V8'", "'M8[s]'", "'m8[ns]'", "'(2,3)f4'",
                    "np.dtype([('x', 'f8'), ('n', 'i2')])",
                    "np.dtype([('t', 'u1'), ('v', 'f8')], align=True)", "np.dtype([])",
                    "None", "np.float32", "'f8,i4'", "{'names': ['a'], 'formats': ['u1']}",
                    "ctypes.c_int", "Point", "np.dtype('u2').newbyteorder()", "'(0,)f8'",
                    "'(1 << 40,)u1'")
        bad = pick("object", "'O'", "[('a', 'O')]", "np.dtypes.StringDType()", "'q9'", "5",
                   "{'names': ['a']}", "'S-1'", "[('a', 'f8', (1 << 62,))]", "WithObject")
        hostile = one(
            st.builds(lambda d, a: f"HDtype({d}, {a})", pick("'f8'", "'u1'", "'(2,)i4'"),
                      self.acts(closing)),
            st.builds(lambda d, a: f"HStr({d}, {a})", pick("'f8'", "'u1'"), self.acts(closing)),
        )
        return one(good, bad, hostile)

    def ctypes_types(self):
        return pick("ctypes.c_int", "ctypes.c_double", "ctypes.c_longdouble", "ctypes.c_char",
                    "ctypes.c_bool", "Point", "Pair", "Empty", "ctypes.c_int * 3",
                    "(ctypes.c_double * 3) * 2", "ctypes.c_char * 0",
                    "ctypes.POINTER(ctypes.c_int)", "ctypes.c_void_p", "ctypes.py_object",
                    "WithObject", "ctypes.py_object * 2", "ctypes.c_char * (1 << 20)",
                    "ctypes.c_int * (3 << 20)", "Point * 5")

    def orders(self, closing=True, like=False):
        base = ["'C'", "'F'", "'c'", "'f'", "None", "'X'", "5", "b'C'", "'CF'", "''"]
        if like:
            base[5:5] = ["'A'", "'K'", "'a'", "'k'"]
        return one(pick(*base),
                         st.builds(lambda o, a: f"HStr({o}, {a})", pick("'C'", "'F'", "'K'"),
                                   self.acts(closing)))

    def fills(self, closing=True):
        return one(
            pick("0", "1", "2.7", "-1", "1e300", "float('nan')", "'x'", "b'ab'", "None",
                 "object()", "[1, 2, 3]", "1j", "np.datetime64('2020')", "2 ** 70", "v0"),
            st.builds(lambda a: f"HInt(3, {a})", self.acts(closing)),
            st.builds(lambda a: f"HArrayLike([1], {a})", self.acts(closing)))

    def devices(self, closing=True):
        return one(pick("None", "'cpu'", "'gpu'", "5", "b'cpu'"),
                         st.builds(lambda a: f"HStr('cpu', {a})", self.acts(closing)))

    def aligns(self):
        """(source, the alignment the result must have, or None)."""
        valid = st.builds(lambda k: (str(1 << k), 1 << k), st.integers(0, 13))
        odd = pick(("None", None), ("0", None), ("3", None), ("12", None), ("-8", None),
                   ("16384", None), ("1 << 70", None), ("16.0", None), ("'16'", None),
                   ("True", 1), ("np.int64(64)", 64), ("np.uint8(8)", 8),
                   ("LyingInt(-8)", None), ("LyingInt(16)", 16))
        closing = self.on("close_cb_align")
        hostile = st.builds(lambda k, a, kind: (f"{kind}({1 << k}, {a})", 1 << k),
                            st.integers(0, 13), self.acts(closing), pick("HInt", "Idx"))
        out = [pick(("None", None)), valid, odd, hostile]
        if self.on("lying_align"):
            out.append(pick(("LyingInt(12)", 12), ("LyingInt(16384)", 16384),
                            ("LyingInt(0)", None), ("LyingInt(3)", 3)))
        if self.on("liar"):
            out.append(pick(("Idx([16, 3])", None), ("Idx([8, 4096])", None)))
        return one(*out)

    def zeros_arg(self):
        """(source, truth: the result must read zero; None: unknown)."""
        return one(
            pick(("True", True), ("False", False), ("None", False), ("0", False),
                 ("1", True), ("'x'", True), ("[]", False), ("np.bool_(True)", True)),
            st.builds(lambda a: (f"HBool(True, {a})", True), self.acts(True)),
            pick(("HBool([True, False])", None), ("HBool([False, True])", None)))

    def values(self):
        """Names of arrays."""
        return pick("v0", "v1", "v2", "v3", "v4", "v5")

    def bvalues(self):
        """Names of Blocks."""
        return pick("b0", "b1", "b2", "b3")

    def cvalues(self):
        """Names of ctypes values."""
        return pick("c0", "c1", "c2", "c3")

    def anyvalue(self):
        return one(self.values(), self.bvalues(), self.cvalues())

    def arraylikes(self, closing=True, blocks=True, cdata=True):
        """The a of the *_like functions, the obj of Arena.owns (blocks,
        cdata: Blocks and ctypes objects too)."""
        c = self.cvalues() if cdata else self.values()
        cb = pick("ctypes_buffer(0)", "ctypes_buffer(1)", "ctypes_buffer(2)",
                  "ctypes_buffer(3)") if cdata else self.values()
        return one(
            self.values(), self.bvalues() if blocks else self.values(),
            pick("np.zeros((3, 4), order='F')", "np.arange(12.0).reshape(3, 4)[:, ::2]",
                 "np.arange(24).reshape(2, 3, 4).transpose(2, 0, 1)", "np.zeros(0)",
                 "np.array(5)", "[[1, 2], [3, 4]]", "3", "'abc'", "None",
                 "np.zeros(3, 'M8[s]')", "np.array([1, None], dtype=object)",
                 "np.zeros(2, dtype=[('x', 'f8')])", "memoryview(bytearray(16))[::-2]",
                 "b'abcd'", "bytearray(8)", "np.ma.zeros(3)", "np.matrix([[1, 2]])",
                 "np.datetime64('2020')", "np.float32(1)", "np.zeros((2, 0, 3))"),
            c, cb,
            st.builds(lambda a, p: f"hostile_array(np.zeros(4), {a}, {p})", self.acts(closing),
                      pick("'shape'", "'dtype'", "'strides'", "'flags'", "'ndim'", "'nbytes'",
                           "'__array_interface__'", "'shape', 'strides'")),
            st.builds(lambda a: f"HArrayLike([1.0, 2.0], {a})", self.acts(closing)))

    def owned(self):
        """The obj of Heap.owns: addresses, Blocks, buffers, arrays."""
        closing = self.on("close_cb_owns")
        plain = one(
            self.values(), self.bvalues(),
            st.builds(lambda v, f: f.format(v), one(self.values(), self.bvalues()),
                      pick("addr({})", "memoryview({})", "view({}, 0)", "view({}, 1)",
                           "view({}, 2)", "view({}, 3)", "view({}, 4)", "addr({}) + 1")),
            st.builds(lambda v, f: f.format(v), self.cvalues(),
                      pick("memoryview({})", "addr({})", "view({}, 1)")),
            pick("0", "-1", "1 << 48", "1 << 64", "True", "3.5", "'x'", "None", "object()",
                 "b'abc'", "bytearray(5)", "memoryview(bytearray(16))[::-2]",
                 "memoryview(b'')", "np.zeros(3)", "np.zeros(0)", "np.array(5)",
                 "np.zeros(3, 'M8[s]')", "np.zeros(2, dtype=object)",
                 "np.zeros(3, dtype=[('x', 'f8')])", "np.float64(1.0)",
                 "np.arange(10)[::-3]", "Block.__new__(Block)", "np.ma.zeros(3)"),
            st.builds(lambda n, a: f"HInt({n}, {a})", self.sizes(), self.acts(closing)),
            st.builds(lambda a, p: f"hostile_array(np.zeros(4), {a}, {p})", self.acts(closing),
                      pick("'nbytes'", "'__array_interface__'", "'shape'", "'strides'",
                           "'dtype'")),
        )
        if not self.on("owns_nostride"):
            return plain
        return one(plain, self.cvalues(),
                         pick("ctypes_buffer(0)", "ctypes_buffer(1)", "ctypes_buffer(2)",
                              "ctypes_buffer(3)", "np.datetime64('2020')", "np.timedelta64(5)"))

    # -- receivers and steps --------------------------------------------------

    def heaps(self):
        return pick("h0", "h1", "h2", "default_heap()")

    def arenas(self):
        return pick("a0", "a1", "a2", "a3")

    def types(self):
        """(type source, is a ctypes type). The dtype side leaves out the
        ctypes types numpy.dtype also accepts: new and newarray take them
        as ctypes types."""
        dtypes = self.dtypes().filter(lambda d: d not in CTYPES_AS_DTYPES)
        return one(st.tuples(dtypes, st.just(False)),
                   st.tuples(self.ctypes_types(), st.just(True)))

    def alloc_call(self, recv, is_arena, methods):
        """An allocation method call of recv: (label, kind of value, call
        source, wrapper: fresh or keep, alignment asked)."""
        f = self

        def alloc_(nb, zero, al):
            args = [nb]
            if zero is not None:
                args.append(f"zero={zero[0]}")
            if al[0] != "None":
                args.append(f"align={al[0]}")
            z = True if zero is None or is_arena else zero[1]
            return ("alloc", "b", f"{recv}.alloc({', '.join(args)})",
                    "fresh" if z else "keep", al[1])

        def array(meth, shape, dtype, order, dev, n_pos):
            args = [shape] + [dtype, order][:n_pos]
            if dev is not None:
                args.append(f"device={dev}")
            z = meth == "zeros" or is_arena
            return (meth, "v", f"{recv}.{meth}({', '.join(args)})", "fresh" if z else "keep",
                    None)

        def fullc(shape, fill, dtype, order, n_pos):
            args = [shape, fill] + [dtype, order][:n_pos]
            return ("full", "v", f"{recv}.full({', '.join(args)})", "keep", None)

        def like(meth, a, dtype, order, shape, fill, n_kw):
            args = [a] + ([fill] if meth == "full_like" else [])
            kws = [("dtype", dtype), ("order", order), ("shape", shape)][:n_kw]
            args += [f"{k}={v}" for k, v in kws]
            z = meth == "zeros_like" or (is_arena and meth == "empty_like")
            return (meth, "v", f"{recv}.{meth}({', '.join(args)})", "fresh" if z else "keep",
                    None)

        def new(tc):
            return ("new", "c" if tc[1] else "v", f"{recv}.new({tc[0]})", "fresh", None)

        def newarray(tc, n):
            return ("newarray", "c" if tc[1] else "v", f"{recv}.newarray({tc[0]}, {n})",
                    "fresh", None)

        calls = {
            "alloc": st.builds(alloc_, f.ints(), one(st.none(), f.zeros_arg()),
                               f.aligns()),
            "array": st.builds(array, pick("zeros", "empty"), f.shapes(), f.dtypes(),
                               f.orders(), one(st.none(), f.devices()),
                               st.integers(0, 2)),
            "full": st.builds(fullc, f.shapes(), f.fills(), f.dtypes(), f.orders(),
                              st.integers(0, 2)),
            "like": st.builds(like, pick("zeros_like", "empty_like", "full_like"),
                              f.arraylikes(), f.dtypes(), f.orders(like=True),
                              one(pick("None"), f.shapes()), f.fills(),
                              st.integers(0, 3)),
            "new": st.builds(new, f.types()),
            "newarray": st.builds(newarray, f.types(), f.ints()),
        }
        return one(*[calls[m] for m in methods])

    def alloc_step(self):
        """An allocation from a heap, an arena, the module functions or
        reflect, bound to a name of its kind."""
        def bind(where, call, slot):
            label, kind, src, wrap, align = call
            name = f"{kind}{slot % (6 if kind == 'v' else 4)}"
            head = src.split(".", 1)[0]
            recv = f", {head!r}" if head[:1] in "ha" and head[1:].isdigit() else ""
            al = f", align={align}" if align is not None else ""
            return (f"{where}.{label}", f"with step({{k}}{recv}): {name} = {wrap}({src}{al})")

        every = ("alloc", "array", "full", "like", "new", "newarray")
        # One strategy per receiver, not a flatmap: Hypothesis generates
        # (and mutates) a flatmap's freshly built strategies poorly.
        heap_calls = one(*[self.alloc_call(r, False, every)
                           for r in ("h0", "h1", "h2", "default_heap()")])
        arena_calls = one(*[self.alloc_call(r, True, every) for r in ("a0", "a1", "a2", "a3")])
        module_calls = self.alloc_call("pyarena", False, every[:4])
        reflect_calls = one(
            st.builds(lambda tc: ("unsafe_New", "c" if tc[1] else "v",
                                  f"reflect.unsafe_New({tc[0]})", "fresh", None), self.types()),
            st.builds(lambda tc, n: ("unsafe_NewArray", "c" if tc[1] else "v",
                                     f"reflect.unsafe_NewArray({tc[0]}, {n})", "fresh", None),
                      self.types(), self.ints()))
        slot = st.integers(0, 11)
        return one(
            st.builds(lambda c, t: bind("Heap", c, t), heap_calls, slot),
            st.builds(lambda c, t: bind("Arena", c, t), arena_calls, slot),
            st.builds(lambda c, t: bind("module", c, t), module_calls, slot),
            st.builds(lambda c, t: bind("reflect", c, t), reflect_calls, slot),
        )

    def numpy_step(self):
        """Arrays NumPy makes, under a heap's handler or whatever is installed."""
        n = pick("10", "1000", "3", "0", "5000", "300000", "(2 << 20) // 8")
        expr = one(
            st.builds(lambda k: (f"np.zeros({k})", "fresh"), n),
            st.builds(lambda k, f: (f.format(k), "keep"), n,
                      pick("np.ones({})", "np.arange({})", "np.empty({})", "np.full({}, 7.0)",
                           "np.concatenate([np.ones(3), np.ones({})])")),
            st.builds(lambda v, f: (f.format(v), "keep"), self.values(),
                      pick("{} * 2", "{}.copy()", "np.ascontiguousarray({}[::-1])")))
        where = pick("h0", "h1", "None", "default_heap()")
        if self.on("handler_arg"):
            where = one(where, pick("5", "a0", "'x'"))
        target = self.values()

        def block(w, e, t):
            recv = f", {w!r}" if w in ("h0", "h1") else ""
            return ("numpy_allocator", f"with step({{k}}{recv}), numpy_allocator({w}):\n"
                                       f"    {t} = {e[1]}({e[0]}, numpy=True)")
        return one(
            st.builds(block, where, expr, target),
            st.builds(lambda e, t: ("numpy",
                                    f"with step({{k}}): {t} = {e[1]}({e[0]}, numpy=True)"),
                      expr, target),
            st.builds(lambda w: ("install_numpy_allocator",
                                 f"with step({{k}}): install_numpy_allocator({w})"), where),
            st.just(("uninstall_numpy_allocator", "with step({k}): uninstall_numpy_allocator()")))

    def simple(self, label, src, receiver=None, expect=None, allow=None):
        extra = ""
        if receiver is not None:
            extra += f", {receiver!r}"
        if expect is not None:
            extra += f", expect={expect}"
        if allow is not None:
            extra += f", allow={allow}"
        return (label, f"with step({{k}}{extra}): {src}")

    def other_step(self):
        S = self.simple
        heap_ops = st.builds(
            lambda h, op: S(f"Heap.{op.split('(')[0]}", f"{h}.{op}"), self.heaps(),
            pick("close()", "release()", "stats()", "__enter__()", "__exit__(None, None, None)",
                 "numpy_handler()", "closed", "__repr__()"))
        clone = one(
            st.builds(lambda a, x, t: S("Arena.clone", f"{t} = keep({a}.clone({x}))"),
                      self.arenas(),
                      one(self.values(), self.arraylikes(blocks=False, cdata=False)),
                      self.values()),
            st.builds(lambda a, x, t: S("Arena.clone", f"{t} = keep({a}.clone({x}))"),
                      self.arenas(), self.bvalues(), self.bvalues()),
            st.builds(lambda a, x, t: S("Arena.clone", f"{t} = keep({a}.clone({x}))"),
                      self.arenas(), self.cvalues(), self.cvalues()))
        arena_ops = one(
            st.builds(lambda a, op: S(f"Arena.{op.split('(')[0]}", f"{a}.{op}"), self.arenas(),
                      pick("free()", "stats()", "freed", "__exit__(None, None, None)",
                           "__repr__()", "__enter__()")),
            st.builds(lambda a, z: S("Arena.free", f"{a}.free(strict={z[0]})"), self.arenas(),
                      self.zeros_arg()),
            clone,
            st.builds(lambda a, x: S("Arena.owns", f"{a}.owns({x})"), self.arenas(),
                      one(self.arraylikes(), self.owned())),
        )
        owns = st.builds(lambda h, x: S("Heap.owns", f"{h}.owns({x})"), self.heaps(),
                         self.owned())
        drops = one(
            st.builds(lambda v: S("del", f"del {v}"), self.anyvalue()),
            st.builds(lambda v: S("del", f"del {v}"), pick("h1", "h2", "a1", "a2", "a3", "m0",
                                                           "m1", "h0", "a0")))
        unbound = st.builds(
            # (Heap has no free and Arena no release: AttributeError.)
            lambda cls, m, x: S(f"unbound:{cls}.{m.split('(')[0]}",
                                f"{cls}.{m.format(x)}", allow="(AttributeError,)"),
            pick("Heap", "Arena"),
            pick("alloc({}, 8)", "zeros({}, 3)", "new({}, 'f8')", "owns({}, 0)", "stats({})",
                 "close({})", "free({})", "release({})", "newarray({}, ctypes.c_int, 2)"),
            pick("h0", "a0", "5", "None", "SkipInitHeap()", "b0", "Block.__new__(Block)"))
        tracing = pick(S("tracemalloc", "tracemalloc.start()"),
                       S("tracemalloc", "tracemalloc.stop()"),
                       S("tracemalloc",
                         "m1 = tracemalloc.is_tracing() and tracemalloc.take_snapshot()"))
        makes = one(
            pick(S("Heap()", "h2 = Heap()"), S("Heap.__new__", "h2 = Heap.__new__(Heap)"),
                 S("SkipInitHeap", "h2 = SkipInitHeap()"), S("Arena()", "a2 = Arena()"),
                 S("copy.copy(Arena)", "a3 = copy.copy(a0)")),
            st.builds(lambda c, h: S("Arena()", f"a2 = Arena({c}, heap={h})"),
                      pick("8192", "65536", "8 << 20", "0", "-8192", "8193", "1 << 37", "'x'",
                           "None", "Idx(65536, collect())", "HInt(65536, close(h1))"),
                      pick("h0", "h1", "h2", "None", "5", "a0")),
            st.builds(lambda a, c, h: S("Arena.__init__", f"{a}.__init__({c}, heap={h})"),
                      self.arenas(), pick("65536", "8 << 20", "0"), pick("h0", "h1", "None")),
        )
        if self.on("halfbuilt_arena"):
            makes = one(makes, pick(S("Arena.__new__", "a3 = Arena.__new__(Arena)"),
                                          S("SkipInitArena", "a3 = SkipInitArena()")))
        copies = st.builds(
            lambda x, how: S(f"copy:{how.split('(')[0]}", f"m0 = {how.format(x)}",
                             allow="(pickle.PicklingError,)"),
            pick("h0", "a0", "b0", "v0", "c0", "base_of(v0)", "Block.__new__(Block)",
                 "Chunk.__new__(Chunk)", "h0.stats()", "a0.stats()", "default_heap()"),
            pick("copy.copy({})", "copy.deepcopy({})", "pickle.loads(pickle.dumps({}))",
                 "{}.__reduce_ex__(2)", "{}.__reduce__()"))
        block_attrs = st.builds(
            lambda x, op: S(f"Block:{op.split('(')[0]}", f"m1 = {op.format(x)}"),
            pick("b0", "b1", "Block.__new__(Block)"),
            pick("{}.address", "{}.nbytes", "{}.size_class", "{}.slot_size", "{}.heap",
                 "len({})"))
        buffers = st.builds(
            lambda x, op: S(f"buffer:{op.split('(')[0]}", f"m1 = {op.format(x)}"),
            pick("b0", "b1", "Block.__new__(Block)", "Chunk.__new__(Chunk)", "base_of(v0)", "c0",
                 "base_of(c0)"),
            pick("memoryview({})", "repr({})", "bytes({})", "np.frombuffer({}, 'u1')",
                 "(ctypes.c_char * 4).from_buffer({})", "memoryview({}).tobytes()"))
        module = one(
            st.builds(lambda n: S("size_class", f"size_class({n})"), self.ints()),
            pick(S("size_classes", "size_classes()"), S("stats", "stats()"),
                 S("release", "release()"), S("get_include", "pyarena.get_include()"),
                 S("default_heap.close", "default_heap().close()")))
        resizes = st.builds(lambda v, n: S("resize", f"resize({v}, {n})"), self.values(),
                            pick("0", "1", "100", "5000", "300000", "(2 << 20) + 1", "-1",
                                 "(3, 4)"))
        gcs = one(
            st.builds(lambda n: S("gc_every", f"gc_every({n})"), pick("1", "2", "5", "17")),
            st.builds(lambda a: S("bomb", f"bomb({a})"),
                      self.acts(self.on("close_cb_gc"), finalizer=True)),
            pick(S("gc.collect", "gc.collect()")))
        unknown = st.builds(
            lambda call: S("unknown-kwarg", call, expect="TypeError"),
            pick("h0.alloc(8, bogus=1)", "h0.zeros(3, bogus=1)", "h0.full(3, 1, bogus=1)",
                 "h0.zeros_like(v0, bogus=1)", "h0.new('f8', bogus=1)",
                 "h0.newarray('f8', 2, bogus=1)", "h0.owns(0, bogus=1)", "h0.stats(1)",
                 "h0.close(1)", "h0.release(x=1)", "a0.alloc(8, bogus=1)", "a0.zeros(3, bogus=1)",
                 "a0.free(bogus=1)", "a0.new('f8', 1)", "Arena(bogus=1)", "Arena(1, 2, 3)",
                 "pyarena.alloc(8, bogus=1)", "pyarena.zeros(3, bogus=1)",
                 "reflect.unsafe_New('f8', bogus=1)", "size_class(8, bogus=1)",
                 "pyarena.stats(1)", "install_numpy_allocator(h0, bogus=1)"))
        out = [heap_ops, arena_ops, owns, owns, drops, drops, makes, copies, block_attrs, buffers,
               module, resizes, gcs, unknown, tracing]
        if self.on("unbound_self"):
            out.append(unbound)
        if self.on("unknown_args"):
            out.append(pick(S("Heap(kw)", "Heap(nonsense=1, debug=True)", expect="TypeError"),
                            S("Heap(pos)", "Heap(1)", expect="TypeError"),
                            # object.__new__'s rule when __init__ is overridden: the
                            # arguments are __init__'s; the bare heap must work.
                            S("Heap.__new__(args)", "h2 = Heap.__new__(Heap, 1)")))
        if self.on("scribble"):
            out.append(st.builds(lambda v: S("scribble", f"scribble({v})"),
                                 one(self.values(), self.cvalues())))
        if self.on("gib"):
            out.append(st.builds(
                lambda h: S("gib", f"b3 = keep({h}.alloc((1 << 30) + 8192, zero=False))", h),
                pick("h0", "h1")))
        return one(*out)

    def scenarios(self):
        """For each feature on: a few steps that take its argument kinds
        where they matter (a feature's kinds are a small part of the
        general grammar, and would seldom meet the call they break)."""
        S = self.simple
        out = []
        fresh_heap = S("Heap()", "h2 = Heap()")
        if self.on("owns_nostride"):
            out.append(st.builds(
                lambda t, x: [fresh_heap,
                              S("Heap.newarray", f"c0 = fresh(h2.newarray({t}, 3))", "h2"),
                              S("Heap.owns", f"h2.owns({x})")],
                pick("ctypes.c_int", "Point", "ctypes.c_double * 2"),
                pick("c0", "ctypes_buffer(0)", "ctypes_buffer(1)", "ctypes_buffer(2)",
                     "np.datetime64('2020')", "np.timedelta64(5)", "ctypes_buffer(3)")))
        if self.on("halfbuilt_arena"):
            out.append(st.builds(
                lambda make, call: [S("Arena.__new__", f"a3 = {make}"), call],
                pick("Arena.__new__(Arena)", "SkipInitArena()"),
                one(self.alloc_call("a3", True, ("alloc", "array", "full", "like", "new",
                                                 "newarray")).map(
                    lambda c: (f"Arena.{c[0]}", f"with step({{k}}, 'a3'): {c[1]}0 = "
                                                f"{c[3]}({c[2]})")),
                    pick(*[S(f"Arena.{m}", f"a3.{m}") for m in
                           ("stats()", "owns(5)", "owns(np.zeros(3))", "free()", "freed",
                            "__repr__()", "clone(np.zeros(2))", "free(strict=True)")]))))
        if self.on("scribble"):
            out.append(st.builds(
                lambda first, big: [S("Arena.zeros", f"v0 = fresh({first})", "a0"),
                                    S("Arena.zeros", "v1 = fresh(a0.zeros(100, 'u1'))", "a0"),
                                    S("scribble", "scribble(v0)"),
                                    S("Arena.zeros", f"v2 = fresh(a0.zeros({big}, 'u1'))", "a0")],
                pick("a0.zeros(16, 'u1')", "a0.new(ctypes.c_int * 4)", "a0.new('f8')",
                     "a0.newarray(Point, 3)"),
                pick("1000", "1 << 20", "2 << 20")))
        if self.on("liar"):
            out.append(st.builds(
                lambda t, a, b: [S("Arena.newarray", f"c0 = fresh(a0.newarray({t}, "
                                                     f"Idx([{a}, {b}])))", "a0"),
                                 S("Arena.alloc", "b0 = fresh(a0.alloc(64))", "a0")],
                pick("ctypes.c_char", "ctypes.c_int", "Point"), pick("1", "2", "0"),
                pick("4000", "100", "1 << 20")))
        if self.on("close_cb_align"):
            out.append(st.builds(
                lambda call: [fresh_heap, S("Arena()", "a2 = Arena(heap=h2)"), call],
                one(st.builds(lambda n, k, kind: S("Heap.alloc", f"b0 = fresh(h2.alloc({n}, "
                                                   f"align={kind}({k}, close(h2))), align={k})",
                                                   "h2"),
                              self.sizes(), pick("16", "64", "4096", "1"), pick("HInt", "Idx")),
                    st.builds(lambda n, k: S("Arena.alloc", f"b0 = fresh(a2.alloc({n}, "
                                             f"align=HInt({k}, close(h2))), align={k})", "a2"),
                              pick("(3 << 20)", "100000", "8 << 20"), pick("16", "4096")))))
        if self.on("close_cb_owns"):
            out.append(st.builds(
                lambda x: [fresh_heap, S("Heap.owns", f"h2.owns({x})")],
                pick("HInt(5, close(h2))", "HInt(1 << 40, close(h2))",
                     "hostile_array(np.zeros(4), close(h2), 'nbytes')",
                     "hostile_array(np.zeros(4), close(h2), '__array_interface__')",
                     "hostile_array(np.zeros(4), close(h2), 'shape')")))
        if self.on("gib"):
            out.append(st.builds(
                lambda big, again: [S("Heap.alloc", f"b3 = keep(h2.alloc({big}, zero=False))",
                                      "h2"),
                                    S("del", "del b3"),
                                    S("Heap.alloc", f"b2 = keep(h2.alloc({again}))", "h2")],
                pick("1 << 30", "(1 << 30) + 8192", "(3 << 29)"),
                pick("64 << 20", "8192", "100000")).map(lambda x: [fresh_heap] + x))
        if self.on("lying_align"):
            out.append(st.builds(
                lambda recv, n, k: [S("Heap.alloc", f"b0 = fresh({recv}.alloc({n}, "
                                    f"align=LyingInt({k})), align={max(k, 1)})", recv)],
                pick("h0", "a0"), self.sizes(), pick(0, 12, 3, 16384, 24)))
        if self.on("setstate"):
            # A one-page chunk whose end lies 808 bytes (or more) into the
            # next page, where a large object goes: the eleventh value of 800
            # bytes crosses into it.
            out.append(st.builds(
                lambda cs, big: [fresh_heap, S("Arena()", "a2 = Arena(heap=h2)"),
                                 S("tamper", f"tamper(a2, 1, {cs})"),
                                 S("Arena.alloc", "b0 = fresh(a2.alloc(800))", "a2"),
                                 S("Heap.zeros", f"v0 = fresh(h2.zeros({big}, 'u1'))", "h2"),
                                 S("Arena.alloc", "m2 = [fresh(a2.alloc(800)) for _ in range(12)]",
                                   "a2")],
                pick("9000", "8192 + 4000"), pick("40000", "100000")))
        if self.on("unknown_args"):
            S2 = self.simple
            out.append(pick([S2("Heap(kw)", "Heap(nonsense=1, debug=True)", expect="TypeError")],
                            [S2("Heap(pos)", "Heap(1)", expect="TypeError")]))
        if self.on("close_cb_gc"):
            out.append(st.builds(
                lambda act, x: [fresh_heap, S("bomb", f"bomb({act})"),
                                S("Heap.owns", f"h2.owns({x})")],
                pick("close(h2)", "close(h2)", "free(a0)"),
                pick("HInt(0, collect())", "HInt(5, alloc_in(h0))", "HInt(7, collect())",
                     "hostile_array(np.zeros(4), collect(), 'nbytes')")))
        if self.on("unbound_self"):
            out.append(st.builds(
                lambda cls, m, x: [S(f"unbound:{cls}", f"{cls}.{m.format(x)}",
                                                     allow="(AttributeError,)")],
                pick("Heap", "Arena"),
                pick("alloc({}, 8)", "zeros({}, 3)", "stats({})", "release({})", "close({})",
                     "free({})", "new({}, 'f8')"),
                pick("h0", "a0", "5", "None", "b0")))
        if self.on("handler_arg"):
            out.append(st.builds(lambda w: [(
                "numpy_allocator", f"with step({{k}}), numpy_allocator({w}): pass")],
                pick("5", "a0", "'x'")))
        return out

    def program(self):
        """A batch: about STEPS steps after the prologue, drawn as lists
        averaging 5 steps (Hypothesis' average for a list of up to 10,
        whatever its maximum), each of which can shrink to nothing. With
        features on, the batch starts with one to three of their
        scenarios, among ordinary steps."""
        single = one(self.alloc_step(), self.alloc_step(), self.alloc_step(),
                     self.numpy_step(), self.other_step(), self.other_step()).map(
            lambda x: [x])
        part = st.lists(single, max_size=10)
        parts = [part] * max(1, STEPS // 5)
        extra = self.scenarios()
        if extra:
            mixed = st.lists(one(single, *extra), min_size=1, max_size=4)
            parts = [st.lists(one(*extra), min_size=1, max_size=3), mixed] + parts[1:]
        return st.tuples(*parts).map(lambda ps: [x for p in ps for grp in p for x in grp])


ZERO_SIZE_DTYPES = {"np.dtype([])", "'(0,)f8'"}
CTYPES_AS_DTYPES = {"ctypes.c_int", "Point"}

PROLOGUE = [
    ("Heap()", "with step({k}): h0 = Heap()"),
    ("Heap()", "with step({k}): h1 = Heap()"),
    ("Arena()", "with step({k}): a0 = Arena(heap=h0)"),
    ("Arena()", "with step({k}): a1 = Arena(65536, heap=h1)"),
]


def _tour():
    """An explicit first batch: every allocation method of a heap, an arena,
    the module and reflect once with plain arguments, then the rest of the
    API, so that every run reaches all of it whatever Hypothesis draws."""
    steps = []
    allocs = [("alloc", "b", "alloc(100)"), ("zeros", "v", "zeros((3, 4), 'f4')"),
              ("empty", "v", "empty(10)"), ("full", "v", "full(5, 7, 'i2')"),
              ("zeros_like", "v", "zeros_like(np.ones((2, 3), order='F'))"),
              ("empty_like", "v", "empty_like(np.ones(4))"),
              ("full_like", "v", "full_like(np.ones(4), 2)"), ("new", "c", "new(Point)"),
              ("newarray", "c", "newarray(ctypes.c_int, 5)")]
    n = 0
    for where, recv, methods in (("Heap", "h0", allocs), ("Arena", "a0", allocs),
                                 ("module", "pyarena", allocs[:7])):
        for label, kind, call in methods:
            filled = label in ("full", "full_like")
            unset = label in ("empty", "empty_like") and where != "Arena"
            wrap = "keep" if filled or unset else "fresh"
            r = f", {recv!r}" if recv != "pyarena" else ""
            steps.append((f"{where}.{label}",
                          f"with step({{k}}{r}): {kind}{n % 4} = {wrap}({recv}.{call})"))
            n += 1
    steps += [
        ("reflect.unsafe_New", "with step({k}): v4 = fresh(reflect.unsafe_New('f8'))"),
        ("reflect.unsafe_NewArray",
         "with step({k}): c1 = fresh(reflect.unsafe_NewArray(ctypes.c_double, 3))"),
        ("numpy_allocator",
         "with step({k}, 'h0'), numpy_allocator(h0):\n    v5 = fresh(np.zeros(50))"),
        ("resize", "with step({k}): resize(v5, 500)"),
        ("Heap.owns", "with step({k}): h0.owns(v5)"),
        ("Arena.owns", "with step({k}): a0.owns(v1)"),
        ("Arena.clone", "with step({k}): v3 = keep(a0.clone(v1))"),
        ("bomb", "with step({k}): bomb(collect())"),
        ("unknown-kwarg", "with step({k}, expect=TypeError): h0.alloc(8, bogus=1)"),
        ("del", "with step({k}): del v1"),
        ("Arena.free", "with step({k}): a0.free()"),
        ("Heap.close", "with step({k}): h1.close()"),
    ]
    return steps


TOUR = _tour()


def render(steps):
    """The batch's source, and the label of each step number."""
    lines = ["from fuzz_driver import *", "begin(globals())"]
    labels = []
    for k, (label, src) in enumerate(list(PROLOGUE) + list(steps)):
        lines.append(src.replace("{k}", str(k), 1))
        labels.append(label)
    lines.append("finish()")
    return "\n".join(lines) + "\n", labels


# ---------------------------------------------------------------------------
# Running batches.

class Server:
    """The fork server: one interpreter that has imported numpy and
    pyarena, forking a child per batch."""

    def __init__(self):
        self.proc = None

    def start(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([HERE] + [p for p in sys.path if p])
        env["OPENBLAS_NUM_THREADS"] = "1"   # no thread pool to lose in fork()
        env["PYTHONFAULTHANDLER"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import fuzz_driver; fuzz_driver.serve_without_aslr()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)

    def run(self, source, timeout=BATCH_TIMEOUT, as_budget=AS_BUDGET):
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        req = json.dumps({"source": source, "timeout": timeout,
                          "as_budget": as_budget}).encode()
        self.proc.stdin.write(b"%d\n" % len(req) + req)
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc = None
            raise RuntimeError("the fuzz fork server died")
        return json.loads(self.proc.stdout.read(int(line)))

    def stop(self):
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
            self.proc = None


@pytest.fixture(scope="module")
def server():
    s = Server()
    s.start()
    yield s
    s.stop()


def fresh_interpreter(source, timeout=BATCH_TIMEOUT):
    """Run a batch as a user would: python repro.py, nothing forked."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([HERE] + [p for p in sys.path if p])
    env["PYTHONFAULTHANDLER"] = "1"
    try:
        r = subprocess.run([sys.executable, "-c", source], env=env, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    how = f"killed by {signal.Signals(-r.returncode).name}" if r.returncode < 0 else \
        f"exit {r.returncode}"
    tail = (r.stdout + r.stderr).strip().splitlines()[-6:]
    return how + "\n" + "\n".join(tail)


def describe(res):
    st_ = res["status"]
    if st_ == "signal":
        sig = res["signal"]
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else sig
        last = [ln for ln in res.get("output", "").splitlines() if ln.startswith("step ")]
        return f"crash: killed by {name}" + (f" during {last[-1]}" if last else "")
    if st_ == "timeout":
        return f"timeout after {res.get('elapsed', 0):.0f} s (a hang?)"
    return f"{st_}: {res.get('message', '')}".strip()


class FuzzReport(AssertionError):
    pass


class Campaign:
    """One fuzz test: runs batches, keeps outcomes for the coverage check,
    limits the time spent shrinking, and words the failure."""

    def __init__(self, server, name, features, timeout=BATCH_TIMEOUT):
        self.server = server
        self.timeout = timeout
        self.name = name
        self.grammar = Grammar(features)
        self.verdicts = {}
        self.last_failed = None
        self.outcomes = collections.defaultdict(collections.Counter)
        self.batches = 0
        self.elapsed = 0.0

    def run_one(self, steps):
        source, labels = render(steps)
        if source in self.verdicts:
            res = self.verdicts[source]
        else:
            res = self.server.run(source, timeout=self.timeout,
                                  as_budget=AS_BUDGET_GIB if self.grammar.on("gib") else AS_BUDGET)
            self.batches += 1
            self.elapsed += res.get("elapsed", 0.0)
            for k, outcome in res.get("outcomes", ()):
                if k < len(labels):
                    self.outcomes[labels[k]][outcome] += 1
        self.verdicts[source] = res
        if res["status"] != "ok":
            self.last_failed = (source, res)
            raise FuzzReport(describe(res))

    def test(self, examples, shrink_seconds=None):
        shrink_seconds = SHRINK_SECONDS if shrink_seconds is None else shrink_seconds
        phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink_seconds else [])

        @settings(max_examples=examples, deadline=None, database=None, phases=phases,
                  suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                  print_blob=False)
        @given(self.grammar.program())
        def batch(steps):
            self.run_one(steps)

        batch = hypothesis.example(TOUR)(batch)
        if SEED is not None:
            batch = hypothesis.seed(SEED)(batch)
        # Hypothesis documents this limit as the one to patch: it stops
        # shrinking after so many seconds and reports the smallest failure
        # found by then.
        saved = engine.MAX_SHRINKING_SECONDS
        engine.MAX_SHRINKING_SECONDS = shrink_seconds
        try:
            batch()
        except FuzzReport:
            source, res = self.last_failed
            raise FuzzReport(self.report(source, res)) from None
        finally:
            engine.MAX_SHRINKING_SECONDS = saved

    def report(self, source, res):
        seed = "random" if SEED is None else SEED
        return (f"\npyarena fuzz failure in {self.name}: {describe(res)}\n"
                f"seed: PYARENA_FUZZ_SEED={seed} (hypothesis), {self.batches} batches run\n"
                f"reproduce: save as repro.py and run  PYTHONPATH=src:tests python repro.py\n"
                f"--- repro.py ---\n{source}"
                f"--- batch output (tail) ---\n{res.get('output', '')[-3000:]}\n"
                f"--- in a fresh interpreter: {fresh_interpreter(source, self.timeout)}\n")


# Argument kinds that once reached a defect, and the defect (issue 8's
# numbering; N1.. for what this fuzzer found beyond it). All are fixed.
AIMED = {
    "owns_nostride": "issue 8 defect 1: Heap.owns reads view.strides, NULL for a ctypes "
                     "array or structure and for datetime64 scalars (SIGSEGV)",
    "halfbuilt_arena": "issue 8 defect 2: an Arena whose __init__ never ran crashes "
                       "(zeros, stats, owns, ...: SIGSEGV)",
    "scribble": "issue 8 defect 3: an arena value's .base (ctypes: _objects) is a writable "
                "window onto its whole chunk; writes through it reach other values and "
                "memory later handed out as zero",
    "liar": "issue 8 defect 4: Arena.newarray reads n twice (an __index__ answering 1 then "
            "4000 gets a 4000-byte array in a 1-byte slot: overlapping values)",
    "close_cb_align": "issue 8 defect 5: an align whose __sub__ closes the heap mid-call "
                      "(Heap.alloc, Arena.alloc of a large value): SIGSEGV",
    "close_cb_owns": "issue 8 defect 5: Heap.owns of an int subclass whose __lt__, or an "
                     "ndarray subclass whose nbytes/__array_interface__, closes the heap: "
                     "SIGSEGV",
    "close_cb_gc": "issue 8 defect 5, by a finalizer: a collection inside a Heap.owns "
                   "callback (an int subclass's __lt__, an array's nbytes) runs a finalizer "
                   "that closes the heap: SIGSEGV",
    "gib": "issue 8 defect 6: freeing 1 GiB or more leaves heap_released short, and reuse "
           "wraps it past heap_idle",
    "unknown_args": "issue 8 defect 7: Heap() accepts any arguments",
    "handler_arg": "N1: numpy_allocator(x) and install_numpy_allocator(x) for an x that is "
                   "not a Heap raise AttributeError ('int' object has no attribute "
                   "'numpy_handler'), not TypeError",
    "lying_align": "N2: align is checked with Python operators on the argument object "
                   "(align <= 0, align & (align - 1)) and then converted on its own: an int "
                   "subclass whose operators lie gets SystemError for 0 and blocks that are "
                   "not aligned for 12, 3 or 16384 (Heap.alloc, Arena.alloc)",
    "unbound_self": "N4: a method called through its class with a self of another type "
                    "(Arena.alloc(heap, 8), Heap.stats(arena), Heap.zeros(arena, 3), "
                    "Heap.release(object())) runs on that object: SIGSEGV, SystemError, or "
                    "silently nothing (Heap.close(None)). Cython's binding=True methods do not "
                    "check self (cython/cython#1903, still open)",
    "setstate": "N3: Arena.__setstate_cython__ (the pickle protocol, public on every Arena) "
                "takes any state: a chunk size that is not a multiple of PAGE_SIZE makes "
                "chunks that end inside the next page, and the first value that crosses "
                "into it hangs the process (Arena.alloc)",
}
BASE = frozenset(AIMED) - {"gib"}
OPEN = frozenset()        # kinds of AIMED whose defect is still open


def test_fuzz_api(server):
    """The whole API with every hostile argument kind (all of AIMED but
    gib): every batch must pass."""
    c = Campaign(server, "test_fuzz_api", BASE)
    c.test(EXAMPLES)
    # The net was reached: every kind of call ran, and both answers came.
    seen = {label: sum(cnt.values()) for label, cnt in c.outcomes.items()}
    ok = {label: cnt["ok"] for label, cnt in c.outcomes.items()}
    must = ["Heap.alloc", "Heap.zeros", "Heap.empty", "Heap.full", "Heap.zeros_like",
            "Heap.empty_like", "Heap.full_like", "Heap.new", "Heap.newarray", "Arena.alloc",
            "Arena.zeros", "Arena.full", "Arena.zeros_like", "Arena.new", "Arena.newarray",
            "module.alloc", "module.zeros", "reflect.unsafe_New", "reflect.unsafe_NewArray",
            "numpy_allocator", "Heap.owns", "Arena.owns", "Heap.close", "Arena.free", "del",
            "resize", "bomb", "unknown-kwarg"]
    if EXAMPLES >= 100:
        missing = [m for m in must if not seen.get(m)]
        assert not missing, f"never drawn: {missing}"
        never_ok = [m for m in must[:20] if not ok.get(m)]
        assert not never_ok, f"never returned a value: {never_ok}"
        errors = sum(cnt[o] for cnt in c.outcomes.values() for o in cnt
                     if o not in ("ok", "skipped"))
        assert errors > 0, "no call was refused: the hostile arguments never reached the API"


@pytest.mark.parametrize("feature", [
    pytest.param(name, marks=pytest.mark.xfail(strict=False, reason=reason)) if name in OPEN
    else name for name, reason in AIMED.items()])
def test_fuzz_aimed(server, feature):
    """Batches that start with a scenario aimed at one argument kind."""
    # While the defect is open: no shrinking, and a short timeout (these
    # batches are small; one defect was a hang).
    is_open = feature in OPEN
    Campaign(server, f"test_fuzz_aimed[{feature}]", BASE | {feature},
             timeout=5.0 if is_open else BATCH_TIMEOUT).test(
        max(10, EXAMPLES // 6), shrink_seconds=0 if is_open else SHRINK_SECONDS)


# ---------------------------------------------------------------------------
# The harness itself: each check fires when it should.

def _batch(*lines):
    return "from fuzz_driver import *\nbegin(globals())\n" + "\n".join(lines) + "\nfinish()\n"


@pytest.mark.parametrize("lines, want", [
    (["with step(0): import ctypes; ctypes.string_at(0)"], "killed by SIGSEGV during step 0"),
    (["with step(0): raise RuntimeError('x')"], "unexpected RuntimeError"),
    (["with step(0): h0 = Heap()", "with step(1): v0 = fresh(np.ones(10))"],
     "should read zero"),
    (["with step(0): h0 = Heap()", "with step(1): v0 = fresh(h0.zeros(10))",
      "with step(2): v1 = keep(v0[2:])"], "overlaps live v0"),
    (["with step(0): h0 = Heap()", "with step(1): b0 = fresh(h0.alloc(10))",
      "with step(2): memoryview(b0)[3] = 1"], "was overwritten"),
    (["with step(0): h0 = Heap()", "with step(1): v0 = fresh(h0.zeros(10))",
      "with step(2): v0[3] = 1"], "was overwritten"),
    (["with step(0): h0 = Heap()", "with step(1): h0.close()",
      "with step(2, 'h0'): v0 = keep(np.ones(3))"], "closed (or freed) before the call"),
    (["with step(0): h0 = Heap()", "with step(1, expect=TypeError): h0.alloc(8)"],
     "should have raised TypeError"),
    (["with step(0): h0 = Heap()", "with step(1): b0 = fresh(h0.alloc(100))",
      "with step(2): b1 = fresh(h0.alloc(100), align=4096)"], "is not 4096-aligned"),
    (["import fuzz_driver", "with step(0): bomb(fuzz_driver._Act('x', lambda: 1 / 0))"],
     "unraisable"),
    (["with step(0): h0 = Heap()", "with step(1): _leak = h0.zeros(8)"],
     "objects after everything was dropped"),
])
def test_harness_catches(server, lines, want):
    res = server.run(_batch(*lines))
    assert res["status"] != "ok", res
    assert want in describe(res), describe(res)


def test_harness_passes_and_skips(server):
    """Allowed exceptions pass, a step whose variable was never made is
    skipped, and the outcomes of each step come back."""
    res = server.run(_batch("with step(0): h0 = Heap()",
                            "with step(1): h0.alloc(-1)",
                            "with step(2): v0 = fresh(h9.alloc(8))",
                            "with step(3): v1 = fresh(h0.zeros(5))",
                            "with step(4): resize(v1, 1000)"))
    assert res["status"] == "ok", describe(res)
    assert res["outcomes"] == [[0, "ok"], [1, "ValueError"], [2, "skipped"], [3, "ok"],
                               [4, "ok"]]


def test_harness_stats_identities():
    """check_stats refuses each broken identity."""
    import dataclasses

    import pyarena

    good = pyarena.Heap().stats()
    fuzz_driver.check_stats(good, "good")
    for change in (dict(heap_idle=good.heap_idle + 8192),
                   dict(heap_released=good.heap_idle + 8192, heap_idle=good.heap_idle),
                   dict(heap_objects=good.heap_objects + 1),
                   dict(mallocs=good.mallocs + 1, heap_objects=good.heap_objects + 1),
                   dict(heap_released=(1 << 64) - 8192),
                   dict(invalid_frees=1)):
        bad = dataclasses.replace(good, **change)
        with pytest.raises(fuzz_driver.FuzzFailure):
            fuzz_driver.check_stats(bad, "bad")
