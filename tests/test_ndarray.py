"""The NumPy face: zeros, empty, full and the *_like functions, on a Heap
and at module level (the default heap).

numpy's own constructors are the oracle for shape, dtype, strides and
contents. The arrays must be plain, writable ndarrays that own their data
with the heap's NEP 49 handler ("pyarena"), aligned to max(16, the dtype's
alignment), zeroed when asked even when the memory is reused, and valid for
as long as any view of them lives, whatever happens to the Heap object.
"""

from __future__ import annotations

import gc
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest
from numpy._core.multiarray import get_handler_name

import pyarena
from pyarena import Heap
from pyarena import _testing
from pyarena._testing import check_heap

KiB = 1024
MiB = 1024 * KiB


def objects(h: Heap) -> int:
    return h.stats().heap_objects


def address(arr) -> int:
    # arr.ctypes cannot describe datetime64 arrays; the interface can.
    return arr.__array_interface__["data"][0]


def assert_heap_array(arr, h: Heap | None = None, *, owner=True):
    """The properties every array made by pyarena must have. owner=False
    checks the memory's owner (arr itself or its .base) instead of arr."""
    assert type(arr) is np.ndarray
    assert arr.flags.writeable
    own = arr
    if not owner:
        while own.base is not None:
            own = own.base
    assert own.flags.owndata
    assert own.base is None
    assert type(own) is np.ndarray
    assert get_handler_name(own) == "pyarena"
    assert address(arr) % max(16, arr.dtype.alignment) == 0, (
        hex(address(arr)), arr.dtype, arr.dtype.alignment)
    if h is not None and arr.nbytes:
        assert h.owns(arr)


def raw_bytes(arr):
    """A writable uint8 view of all of arr's bytes (arr contiguous)."""
    flat = arr.ravel(order="K")
    assert np.shares_memory(flat, arr) or arr.nbytes == 0
    return flat.view(np.uint8)


def assert_like_numpy(arr, ref, *, strides=True):
    assert arr.shape == ref.shape
    assert arr.dtype == ref.dtype
    # numpy gives zero-size arrays all-zero strides; those strides mean
    # nothing, so they are compared only for arrays with elements.
    if strides and ref.size:
        assert arr.strides == ref.strides, (arr.strides, ref.strides)
    assert arr.flags.c_contiguous == ref.flags.c_contiguous or not ref.size
    assert arr.flags.f_contiguous == ref.flags.f_contiguous or not ref.size


# ---------------------------------------------------------------------------
# dtypes

DTYPES = [
    "b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8",
    "f2", "f4", "f8", "g", "c8", "c16", "G",
    ">i4", "<f8", ">c16",
    "M8[ns]", "M8[D]", "M8[s]", "m8[us]", "m8[Y]", "M8", "m8",
    "S5", "U3", "S", "U", "V7", "V16",
    "(2,3)f8", "(4,)i2", "(2,2)c8",
    [("a", "i4"), ("b", "f8")],
    np.dtype([("a", "u1"), ("b", "f8")], align=True),
    np.dtype([("a", "u1"), ("b", "g")], align=True),
    [("a", "i4", (2,)), ("b", [("c", "f2"), ("d", "M8[s]")]), ("e", "S3")],
    [("x", "(2,3)f4"), ("y", "U2"), ("z", "?")],
    np.dtype({"names": ["p", "q"], "formats": ["i2", "f8"], "offsets": [0, 16],
              "itemsize": 32}),
    np.dtype([]),
    bool, int, float, complex, np.float32, np.longdouble, np.datetime64, np.bytes_,
    np.str_,
]

SHAPES = [(), 0, 1, 7, (3, 4), (2, 0, 3), (2, 3, 4), np.int64(5), (np.int32(2), np.uint8(3))]


def _ids(x):
    return repr(x)[:40]


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("order", ["C", "F"])
def test_zeros_every_dtype(heap, dtype, order):
    for shape in SHAPES:
        arr = heap.zeros(shape, dtype, order)
        ref = np.zeros(shape, dtype, order)
        assert_heap_array(arr, heap)
        assert_like_numpy(arr, ref)
        # every byte is zero, padding included
        assert not raw_bytes(arr).any()
        if order == "C":
            assert arr.tobytes() == ref.tobytes()
        assert np.array_equal(arr, ref)
        # writable, through the bytes too
        raw_bytes(arr)[:] = 0xAB
        assert arr.nbytes == 0 or raw_bytes(arr).min() == 0xAB
    check_heap(heap)


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_empty_every_dtype(heap, dtype):
    for shape in SHAPES:
        for order in "CF":
            arr = heap.empty(shape, dtype, order)
            ref = np.empty(shape, dtype, order)
            assert_heap_array(arr, heap)
            assert_like_numpy(arr, ref)
            raw = raw_bytes(arr)
            raw[:] = 0x5A
            assert (raw == 0x5A).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_module_level_functions(dtype):
    h = pyarena.default_heap()
    a = pyarena.zeros((3, 2), dtype)
    assert_heap_array(a, h)
    assert_like_numpy(a, np.zeros((3, 2), dtype))
    assert a.tobytes() == np.zeros((3, 2), dtype).tobytes()
    assert not raw_bytes(a).any()
    e = pyarena.empty((3, 2), dtype, "F")
    assert_heap_array(e, h)
    assert_like_numpy(e, np.empty((3, 2), dtype, "F"))
    z = pyarena.zeros_like(a)
    assert_heap_array(z, h)
    assert_like_numpy(z, np.zeros_like(np.zeros((3, 2), dtype)))
    el = pyarena.empty_like(e)
    assert_heap_array(el, h)
    assert_like_numpy(el, np.empty_like(np.empty((3, 2), dtype, "F")))


def test_module_level_full():
    h = pyarena.default_heap()
    a = pyarena.full((2, 3), 2.5)
    assert_heap_array(a, h)
    assert_like_numpy(a, np.full((2, 3), 2.5))
    assert np.array_equal(a, np.full((2, 3), 2.5))
    b = pyarena.full_like(a, 7, dtype="i2", order="F")
    ref = np.full_like(np.full((2, 3), 2.5), 7, dtype="i2", order="F")
    assert_heap_array(b, h)
    assert_like_numpy(b, ref)
    assert np.array_equal(b, ref)


def test_unsized_flexible_dtypes_become_size_one(heap):
    for dt in ["S", "U", np.bytes_, np.str_, np.dtype("S"), np.dtype("U"), "S0", "U0"]:
        a = heap.zeros(4, dt)
        ref = np.zeros(4, dt)
        assert a.dtype == ref.dtype
        assert a.dtype.itemsize == ref.dtype.itemsize > 0
        assert_heap_array(a, heap)


def test_subarray_dtype_expands_into_trailing_dims(heap):
    for shape, dt in [((4,), "(2,3)f8"), ((), "(5,)i4"), ((2, 0), "(3,)u1"), (3, "(2,2)c16")]:
        for order in "CF":
            a = heap.zeros(shape, dt, order)
            ref = np.zeros(shape, dt, order)
            assert_like_numpy(a, ref)
            assert_heap_array(a, heap)


def test_nested_struct_contents_and_fields(heap):
    dt = np.dtype([("a", "i4", (2,)), ("b", [("c", "f2"), ("d", "M8[s]")]), ("e", "S3")])
    a = heap.zeros((3,), dt)
    a["a"][1] = [5, 6]
    a["b"]["c"][2] = 1.5
    a["b"]["d"][0] = np.datetime64("2020-01-02T03:04:05")
    a["e"][1] = b"xyz"
    ref = np.zeros((3,), dt)
    ref["a"][1] = [5, 6]
    ref["b"]["c"][2] = 1.5
    ref["b"]["d"][0] = np.datetime64("2020-01-02T03:04:05")
    ref["e"][1] = b"xyz"
    assert a.tobytes() == ref.tobytes()
    assert np.array_equal(a, ref)


def test_alignment_for_wide_and_aligned_dtypes(heap):
    dts = ["g", "G", "c16", np.dtype([("a", "u1"), ("b", "g")], align=True), "u1", "V3"]
    for dt in dts:
        need = max(16, np.dtype(dt).alignment)
        keep = []
        for n in [1, 2, 3, 5, 17, 100, 1000, 5000, 40000]:
            for f in (heap.zeros, heap.empty):
                a = f(n, dt)
                assert a.ctypes.data % need == 0, (dt, n, hex(a.ctypes.data))
                keep.append(a)
    check_heap(heap)


def test_alignment_every_size_class(heap):
    sizes = set()
    for sc in pyarena.size_classes():
        sizes.update({sc.bytes_per_obj - 1, sc.bytes_per_obj, sc.bytes_per_obj + 1})
    sizes.update(range(1, 300))
    keep = []
    for n in sorted(sizes):
        for dt in ("u1", "g"):
            a = heap.empty(n, dt)
            assert address(a) % 16 == 0, (n, dt, hex(address(a)))
            keep.append(a)
    check_heap(heap)


def test_owns_zero_itemsize_array(heap):
    # size 4 but 0 bytes: a zero-length buffer, judged like any other
    # zero-length array made by this heap
    a = heap.zeros(4, np.dtype([]))
    assert a.nbytes == 0 and a.size == 4
    assert_heap_array(a)
    assert heap.owns(a)
    assert heap.owns(a[1:])


def test_zeros_after_reuse_every_size_class(heap):
    sizes = set()
    for sc in pyarena.size_classes():
        sizes.update({sc.bytes_per_obj - 1, sc.bytes_per_obj})
    sizes.update([40000, 100000])
    for n in sorted(s for s in sizes if s > 0):
        for _ in range(3):
            arrs = [heap.zeros(n, np.uint8) for _ in range(3)]
            for a in arrs:
                assert not a.any(), n
                a[:] = 255
            del arrs, a
    assert objects(heap) == 0
    check_heap(heap)


def test_zero_size_arrays(heap):
    before = objects(heap)
    arrs = [heap.zeros(0), heap.empty((3, 0)), heap.zeros((0, 5), "c16", "F"),
            heap.full((0,), 3), heap.zeros_like(np.zeros((2, 0)))]
    other = Heap()
    assert not heap.owns(np.zeros(0)) and not heap.owns(np.zeros((3, 0)))
    assert not heap.owns(other.zeros(0))
    for a in arrs:
        assert a.size == 0 or a.nbytes == 0
        assert type(a) is np.ndarray
        assert a.flags.owndata and a.flags.writeable
        assert get_handler_name(a) == "pyarena"
        assert a.ctypes.data % 16 == 0
        # Heap.owns judges a zero-length array by the array that owns the
        # memory: one made by this heap.
        assert heap.owns(a)
        assert heap.owns(a[:0])
        assert not other.owns(a)
    other.close()
    assert objects(heap) == before
    arrs[0].resize(10, refcheck=False)
    assert np.array_equal(arrs[0], np.zeros(10))
    assert heap.owns(arrs[0])
    del arrs
    gc.collect()
    assert objects(heap) == before
    check_heap(heap)


# ---------------------------------------------------------------------------
# zeros is zero, even when memory is reused


@pytest.mark.parametrize("nbytes", [8, 16 * KiB, 3 * MiB, 4 * MiB],
                         ids=["8B", "16KiB", "3MiB", "4MiB"])
def test_zeros_after_reuse(heap, nbytes):
    rounds = 40 if nbytes >= MiB else 200
    for i in range(rounds):
        dt = [d for d in ["u1", "f8", "i4", "c16"] if np.dtype(d).itemsize <= nbytes][i % 4 if nbytes > 8 else i % 3]
        n = nbytes // np.dtype(dt).itemsize
        a = heap.zeros(n, dt)
        assert a.nbytes == nbytes
        assert not a.view(np.uint8).any(), f"round {i}: reused memory not zero"
        a.view(np.uint8)[:] = 255
        del a
    check_heap(heap)


@pytest.mark.parametrize("nbytes", [8, 48, 16 * KiB, 3 * MiB])
def test_zeros_after_reuse_many_live(heap, nbytes):
    count = 4 if nbytes >= MiB else 64
    for r in range(8):
        arrs = [heap.zeros(nbytes, np.uint8) for _ in range(count)]
        for a in arrs:
            assert not a.any(), f"round {r}: reused memory not zero"
            a[:] = 255
        # free in a shuffled order so that slots come back out of order
        random.Random(r).shuffle(arrs)
        del arrs
    check_heap(heap)


def test_zeros_after_empty_and_full_reuse(heap):
    for nbytes in [8, 40, 1000, 16 * KiB, 40 * KiB, 3 * MiB]:
        for _ in range(5):
            e = heap.empty(nbytes, np.uint8)
            e[:] = 255
            del e
            f = heap.full(nbytes, 255, np.uint8)
            del f
            z = heap.zeros(nbytes, np.uint8)
            assert not z.any()
            z[:] = 255
            del z
    check_heap(heap)


def test_zeros_after_release(heap):
    for nbytes in [64, 16 * KiB, 3 * MiB]:
        a = heap.zeros(nbytes, np.uint8)
        a[:] = 255
        del a
        heap.release()
        b = heap.zeros(nbytes, np.uint8)
        assert not b.any()
        b[:] = 255
        del b
    check_heap(heap)


def test_zeros_after_resize_frees(heap):
    for _ in range(20):
        a = heap.empty(1000, np.uint8)
        a[:] = 255
        a.resize(100000, refcheck=False)   # moves: the old slot is freed
        a[:] = 255
        del a
        b = heap.zeros(1000, np.uint8)
        assert not b.any()
        c = heap.zeros(100000, np.uint8)
        assert not c.any()
        del b, c
    check_heap(heap)


def test_module_zeros_after_reuse():
    for nbytes in [8, 16 * KiB, 3 * MiB]:
        for _ in range(10):
            a = pyarena.zeros(nbytes, np.uint8)
            assert not a.any()
            a[:] = 255
            del a


# ---------------------------------------------------------------------------
# full and full_like


@pytest.mark.parametrize("fill", [0, 1, -3, 2.5, 1 + 2j, True, np.float32(1.5), np.int8(-2),
                                  b"ab", "xyz", np.datetime64("2021-05-06"),
                                  np.timedelta64(7, "s"), 2**40])
@pytest.mark.parametrize("order", ["C", "F"])
def test_full_dtype_inference(heap, fill, order):
    a = heap.full((3, 4), fill, order=order)
    ref = np.full((3, 4), fill, order=order)
    assert_heap_array(a, heap)
    assert_like_numpy(a, ref)
    assert np.array_equal(a, ref)
    assert a.tobytes() == ref.tobytes()


@pytest.mark.parametrize("fill, dtype", [(1.9, "i4"), (np.int64(-1), "u1"), (-1.0, "f2"), (3, "c8"), (1, "?"),
                                         (b"abcdef", "S3"), ("hello", "U2"), (5, "f2"),
                                         (0, [("a", "i4"), ("b", "f8")]), (3, "(2,)f8"),
                                         ("2020-01-01", "M8[D]")])
def test_full_with_dtype(heap, fill, dtype):
    a = heap.full((2, 3), fill, dtype)
    ref = np.full((2, 3), fill, dtype)
    assert_heap_array(a, heap)
    assert_like_numpy(a, ref)
    assert a.tobytes() == ref.tobytes()


def test_full_out_of_range_python_int_like_numpy(heap):
    with pytest.raises(OverflowError):
        np.full(3, -1, "u1")
    with pytest.raises(OverflowError):
        heap.full(3, -1, "u1")
    check_heap(heap)


@pytest.mark.filterwarnings("ignore::numpy.exceptions.ComplexWarning")
@pytest.mark.parametrize("fill", [[1, 2, 3, 4], [[1], [2], [3]], np.arange(4.0),
                                  np.arange(12).reshape(3, 4), np.array([[1.5j], [2], [3]])])
def test_full_broadcasts_array_fill(heap, fill):
    for order in "CF":
        for dtype in (None, "f4"):
            a = heap.full((3, 4), fill, dtype, order)
            ref = np.full((3, 4), fill, dtype, order)
            assert_heap_array(a, heap)
            assert_like_numpy(a, ref)
            assert np.array_equal(a, ref)


def test_full_bad_broadcast_raises_and_heap_stays_consistent(heap):
    before = objects(heap)
    with pytest.raises(ValueError):
        np.full((3, 4), [1, 2, 3])
    with pytest.raises(ValueError):
        heap.full((3, 4), [1, 2, 3])
    gc.collect()
    assert objects(heap) == before
    check_heap(heap)


@pytest.mark.parametrize("fill", [7, 2.5, [1, 2, 3], np.arange(3.0) * 1j])
def test_full_like(heap, fill):
    srcs = [np.arange(6, dtype="i2").reshape(2, 3), np.asfortranarray(np.ones((2, 3))),
            np.ones((3, 2), "f4").T, np.ones((2, 6))[:, ::2]]
    for src in srcs:
        for dtype in (None, "f8", "c16"):
            for order in "KACF":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")    # ComplexWarning
                    ref = np.full_like(src, fill, dtype=dtype, order=order)
                    a = heap.full_like(src, fill, dtype=dtype, order=order)
                assert_heap_array(a, heap, owner=False)
                assert_like_numpy(a, ref)
                assert np.array_equal(a, ref)


def test_full_like_shape_override(heap):
    src = np.ones((2, 3), "i4")
    a = heap.full_like(src, 9, shape=(4, 5))
    ref = np.full_like(src, 9, shape=(4, 5))
    assert_like_numpy(a, ref)
    assert np.array_equal(a, ref)
    a = heap.full_like(src, [1, 2, 3, 4], shape=(3, 4), order="F")
    ref = np.full_like(src, [1, 2, 3, 4], shape=(3, 4), order="F")
    assert_like_numpy(a, ref)
    assert np.array_equal(a, ref)


# ---------------------------------------------------------------------------
# *_like: dtype, shape and order


def _like_inputs():
    base = np.arange(2 * 3 * 4 * 5, dtype="f8").reshape(2, 3, 4, 5)
    return {
        "C": base,
        "F": np.asfortranarray(base),
        "transposed": base.transpose(2, 0, 3, 1),
        "sliced": base[:, ::2, :, 1:4],
        "reversed": base[::-1, :, ::-1],
        "T-sliced": base.T[::2],
        "broadcast": np.broadcast_to(np.arange(3.0), (4, 3)),
        "size1": np.zeros((1, 5, 1))[:, ::2],
        "2dT": np.zeros((3, 4)).T,
        "neg-T": np.zeros((3, 4))[:, ::-1].T,
        "1d-step": np.arange(10)[::3],
        "0d": np.array(3.5),
        "int-list": [[1, 2], [3, 4]],
        "scalar": np.float32(3),
        "i1-T": np.zeros((5, 6, 7), "i1").transpose(1, 2, 0),
        "empty-T": np.zeros((0, 3, 4)).transpose(2, 0, 1),
    }


LIKE_INPUTS = _like_inputs()


@pytest.mark.parametrize("name", list(LIKE_INPUTS))
@pytest.mark.parametrize("fn", ["zeros_like", "empty_like"])
def test_like_matches_numpy(heap, name, fn):
    a = LIKE_INPUTS[name]
    for order in "KACF":
        for dtype in (None, "i2", "c16", "U3", [("x", "u1"), ("y", "f8")]):
            for shape in (None, "same"):
                s = None if shape is None else np.shape(a)
                ref = getattr(np, fn)(a, dtype=dtype, order=order, shape=s)
                out = getattr(heap, fn)(a, dtype=dtype, order=order, shape=s)
                assert_heap_array(out, heap, owner=False)
                assert_like_numpy(out, ref)
                if fn == "zeros_like":
                    assert out.tobytes() == ref.tobytes()


@pytest.mark.parametrize("fn", ["zeros_like", "empty_like", "full_like"])
def test_like_shape_override(heap, fn):
    args = (5,) if fn == "full_like" else ()
    for name, a in LIKE_INPUTS.items():
        for shape in [7, (2, 3), (4, 3, 2, 1), (), (0, 3), np.int64(3), [2, 5]]:
            for order in "KACF":
                new_nd = 1 if isinstance(shape, (int, np.integer)) else len(shape)
                if order == "A" and new_nd != np.ndim(a):
                    continue    # see test_like_order_A_with_shape_override_on_fortran
                ref = getattr(np, fn)(a, *args, order=order, shape=shape)
                out = getattr(heap, fn)(a, *args, order=order, shape=shape)
                assert_heap_array(out, heap, owner=False)
                assert_like_numpy(out, ref)
                if fn != "empty_like":
                    assert np.array_equal(out, ref)


def test_zeros_like_keeps_axis_order_of_transposed(heap):
    a = np.zeros((3, 4, 5)).transpose(1, 2, 0)[:, ::2]
    assert not a.flags.c_contiguous and not a.flags.f_contiguous
    out = heap.zeros_like(a)
    ref = np.zeros_like(a)
    assert out.strides == ref.strides
    # the axes are laid out in a's memory order
    assert np.argsort([-s for s in out.strides]).tolist() == \
        np.argsort([-s for s in a.strides]).tolist()
    assert heap.owns(out)


def test_like_K_noncontiguous_result_owns_its_data(heap):
    # The contract: every array pyarena returns owns its data through the
    # heap's handler (owndata, .base None, handler 'pyarena'), as
    # numpy.zeros_like's result owns its data; it can then be resized.
    bad = []
    for name in ["transposed", "sliced", "reversed", "T-sliced", "broadcast", "size1",
                 "neg-T", "1d-step", "i1-T"]:
        a = LIKE_INPUTS[name]
        assert np.zeros_like(a).flags.owndata
        for fn in (heap.zeros_like, heap.empty_like, lambda x: heap.full_like(x, 1)):
            out = fn(a)
            if not (out.flags.owndata and out.base is None
                    and get_handler_name(out) == "pyarena"):
                bad.append((name, out.flags.owndata, type(out.base).__name__,
                            get_handler_name(out)))
    assert not bad, bad


def test_like_order_A_with_shape_override_on_fortran(heap):
    # numpy: 'A' means F for an F-contiguous prototype, whatever the new
    # shape's ndim (only 'K' falls back to C when the ndim changes)
    f = np.asfortranarray(np.ones((2, 3, 4)))
    for shape in [(2, 3), (5, 6, 7, 8), (4, 3, 2)]:
        ref = np.zeros_like(f, order="A", shape=shape)
        out = heap.zeros_like(f, order="A", shape=shape)
        assert ref.flags.f_contiguous
        assert_like_numpy(out, ref)


def test_like_order_A_and_K_on_fortran(heap):
    f = np.asfortranarray(np.ones((3, 4)))
    for order in "AK":
        out = heap.zeros_like(f, order=order)
        assert out.flags.f_contiguous and not out.flags.c_contiguous
    assert heap.zeros_like(f, order="C").flags.c_contiguous
    c = np.ones((3, 4))
    assert heap.zeros_like(c, order="A").flags.c_contiguous
    assert heap.zeros_like(c, order="F").flags.f_contiguous
    # 'A' on a non-contiguous array is C
    nc = np.ones((4, 6))[:, ::2]
    assert heap.zeros_like(nc, order="A").flags.c_contiguous


def test_like_subclass_input_gives_plain_ndarray(heap):
    class Sub(np.ndarray):
        pass

    s = np.arange(6.0).reshape(2, 3).view(Sub)
    for fn in (heap.zeros_like, heap.empty_like):
        out = fn(s)
        assert type(out) is np.ndarray
        assert out.shape == (2, 3) and out.dtype == s.dtype
    out = heap.full_like(s, 4)
    assert type(out) is np.ndarray and (out == 4).all()
    m = np.ma.masked_array([1, 2, 3], mask=[0, 1, 0])
    assert type(heap.zeros_like(m)) is np.ndarray


def test_like_subarray_dtype_override_contiguous(heap):
    for a in (np.zeros((3, 4)), np.asfortranarray(np.zeros((3, 4)))):
        for order in "KACF":
            ref = np.zeros_like(a, dtype="(2,)f8", order=order)
            out = heap.zeros_like(a, dtype="(2,)f8", order=order)
            assert_like_numpy(out, ref)
            assert_heap_array(out, heap)


def test_like_subarray_dtype_override_noncontiguous(heap):
    # numpy.zeros_like appends the sub-array dims, whatever the input layout
    a = np.zeros((3, 4))[:, ::2]
    ref = np.zeros_like(a, dtype="(2,)f8")
    out = heap.zeros_like(a, dtype="(2,)f8")
    assert out.shape == ref.shape == (3, 2, 2)
    assert_like_numpy(out, ref)
    t = np.zeros((3, 4)).T[::2]
    ref = np.empty_like(t, dtype="(3,)i4")
    out = heap.empty_like(t, dtype="(3,)i4")
    assert_like_numpy(out, ref)


def test_like_bad_order(heap):
    for fn in (heap.zeros_like, heap.empty_like, pyarena.zeros_like):
        with pytest.raises(ValueError):
            fn(np.zeros(3), order="X")
    with pytest.raises(ValueError):
        heap.full_like(np.zeros(3), 1, order="Q")
    check_heap(heap)


def test_like_object_input_refused(heap):
    a = np.array([None, 1], dtype=object)
    with pytest.raises(TypeError):
        heap.zeros_like(a)
    with pytest.raises(TypeError):
        heap.full_like(np.zeros(2), 0, dtype=object)
    # but an object array as input with a plain dtype override is fine
    out = heap.zeros_like(a, dtype="f8")
    assert np.array_equal(out, np.zeros(2))
    check_heap(heap)


# ---------------------------------------------------------------------------
# owns, views


def test_owns_datetime_arrays(heap):
    # Heap.owns accepts "any object exporting a buffer, such as a NumPy
    # array"; heap arrays of every dtype (datetime included) are owned.
    for dtype in ["M8[ns]", "m8[s]", "M8", [("a", "i4"), ("t", "M8[s]")], "(2,)m8[D]"]:
        a = heap.zeros((4, 3), dtype)
        assert heap.owns(a), dtype
        assert heap.owns(a[1:]), dtype
        assert not heap.owns(np.zeros((4, 3), dtype)), dtype


def test_owns_arrays_and_views(heap):
    a = heap.zeros((8, 10), "f4")
    assert heap.owns(a)
    for v in (a[2:5], a[:, 3], a[::-1, ::-2], a.T, a[3, 4:5], a.view(np.uint8),
              a.reshape(-1)[7:], a[1:3].T[::-1]):
        assert heap.owns(v)
    other = Heap()
    try:
        assert not other.owns(a)
        assert not heap.owns(np.zeros((8, 10), "f4"))
        assert not heap.owns(other.zeros(10))
    finally:
        other.close()
    for size in [1, 16, 1000, 40000, 2 * MiB]:
        x = heap.empty(size, np.uint8)
        assert heap.owns(x) and heap.owns(x[size // 2:])


# ---------------------------------------------------------------------------
# lifetime


def test_view_outlives_array(heap):
    start = objects(heap)
    a = heap.zeros((100, 100))
    a[:] = np.arange(100.0)
    v = a[10:20, ::3]
    expect = np.array(v)
    assert objects(heap) == start + 1
    del a
    gc.collect()
    assert objects(heap) == start + 1, "the view's memory was counted freed"
    assert np.array_equal(v, expect)
    # reuse the heap hard; the view's memory must not be handed out
    junk = [heap.zeros((100, 100)) for _ in range(20)]
    for j in junk:
        j[:] = -1
    del j
    assert np.array_equal(v, expect)
    assert heap.owns(v)
    del junk
    v[:] = 5
    assert (v == 5).all()
    del v
    gc.collect()
    assert objects(heap) == start
    check_heap(heap)


def test_view_chain_and_memoryview_keep_memory(heap):
    start = objects(heap)
    a = heap.full(1000, 3, np.int32)
    mv = memoryview(a)[100:200]
    del a
    gc.collect()
    assert objects(heap) == start + 1
    assert np.frombuffer(mv, np.int32).tolist() == [3] * 100
    del mv
    gc.collect()
    assert objects(heap) == start


def test_many_arrays_dropped_returns_to_start(heap):
    start = objects(heap)
    rng = random.Random(1)
    arrs = []
    for i in range(500):
        n = rng.choice([1, 3, 17, 100, 1000, 5000, 40000, 300000])
        f = rng.choice([heap.zeros, heap.empty])
        arrs.append(f(n, rng.choice(["u1", "f8", "c16", "i4"])))
    views = [a[1:] for a in arrs[::7]]
    assert objects(heap) == start + len(arrs)
    del arrs
    gc.collect()
    assert objects(heap) == start + len(views)
    del views
    gc.collect()
    assert objects(heap) == start
    check_heap(heap)


def test_arrays_outlive_deleted_heap():
    h = Heap()
    small = h.zeros(100, "i8")
    big = h.zeros(3 * MiB, np.uint8)
    v = big[MiB:MiB + 10]
    small[:] = np.arange(100)
    del h
    gc.collect()
    assert small.sum() == sum(range(100))
    big[:] = 7
    assert (v == 7).all()
    small[5] = -1
    assert small[5] == -1
    # NumPy allocates through the orphaned heap's handler
    small.resize(5000, refcheck=False)
    assert small[:5].tolist() == [0, 1, 2, 3, 4] and small[5] == -1
    assert not small[100:].any()
    c = small + 1
    assert c[0] == 1
    del big
    gc.collect()
    assert (v == 7).all()
    del v, small
    gc.collect()


def test_arrays_outlive_closed_heap():
    h = Heap()
    a = h.full((50, 50), 1.5)
    big = h.zeros(2 * MiB, np.uint8)
    h.close()
    assert h.closed
    a *= 2
    assert (a == 3.0).all()
    big[:] = 9
    assert big.sum() == 9 * 2 * MiB
    assert h.owns(a)
    for f in (lambda: h.zeros(3), lambda: h.empty((2, 2)), lambda: h.full(3, 1),
              lambda: h.zeros_like(a), lambda: h.empty_like(a), lambda: h.full_like(a, 1),
              lambda: h.zeros(0)):
        with pytest.raises(ValueError):
            f()
    assert h.stats().heap_objects == 2
    del a, big
    gc.collect()
    assert h.stats().heap_objects == 0
    del h
    gc.collect()


def test_close_then_delete_heap_with_live_arrays():
    h = Heap()
    arrs = [h.zeros(n) for n in (1, 10, 1000, 100000)]
    h.close()
    del h
    gc.collect()
    for a in arrs:
        a[:] = 4
        assert (a == 4).all()
    del arrs
    gc.collect()


def test_close_empty_heap_with_zero_size_array():
    # A closed heap allocates no more, through NumPy's handler either:
    # growing an array it made fails cleanly and leaves the array as it was.
    h = Heap()
    z = h.zeros((0, 3))
    h.close()
    assert z.shape == (0, 3)
    del h
    gc.collect()
    with pytest.raises(MemoryError):
        z.resize(4, refcheck=False)
    assert z.shape == (0, 3)
    del z
    gc.collect()


# ---------------------------------------------------------------------------
# resize


@pytest.mark.parametrize("n0, n1", [(10, 20), (10, 5), (1000, 100000), (100000, 1000),
                                    (5000, 5001), (100, 0), (0, 100), (4096, 4096 * 300),
                                    (MiB // 8, MiB // 8 + 7), (3, 3)])
def test_resize(heap, n0, n1):
    a = heap.zeros(n0, "i8")
    a[:] = np.arange(n0) + 1
    a.resize(n1, refcheck=False)
    ref = np.arange(n0) + 1
    ref.resize(n1, refcheck=False)
    assert np.array_equal(a, ref)
    m = min(n0, n1)
    assert a[:m].tolist() == list(range(1, m + 1))
    assert a.flags.owndata and get_handler_name(a) == "pyarena"
    assert a.ctypes.data % 16 == 0
    if n1:
        assert heap.owns(a)
    a[:] = -1
    del a
    gc.collect()
    assert objects(heap) == 0
    check_heap(heap)


def test_resize_that_cannot_be_had_leaves_array_intact(heap):
    a = heap.full(100, 3.0)
    with pytest.raises(MemoryError):
        a.resize(2**50, refcheck=False)
    assert a.shape == (100,) and (a == 3.0).all()
    assert heap.owns(a) and objects(heap) == 1
    check_heap(heap)
    del a
    assert objects(heap) == 0


def test_resize_2d_and_struct(heap):
    a = heap.zeros((3, 4), [("a", "i2"), ("b", "f8")])
    a["a"] = np.arange(12).reshape(3, 4)
    ref = a.copy()
    a.resize((5, 6), refcheck=False)
    ref.resize((5, 6), refcheck=False)
    assert a.tobytes() == ref.tobytes()
    assert heap.owns(a)
    a.resize((2, 2), refcheck=False)
    ref.resize((2, 2), refcheck=False)
    assert a.tobytes() == ref.tobytes()
    assert heap.owns(a)


# ---------------------------------------------------------------------------
# errors


def _after_error(heap, before):
    gc.collect()
    assert objects(heap) == before
    check_heap(heap)
    a = heap.zeros((4, 4))
    assert not a.any()
    del a


@pytest.mark.parametrize("dtype", ["O", object, [("a", "f8"), ("b", "O")],
                                   [("a", [("b", "O")])], "(2,)O",
                                   np.dtype([("x", "i4"), ("y", "O", (2,))])],
                         ids=_ids)
def test_object_dtypes_refused(heap, dtype):
    before = objects(heap)
    for f in (lambda: heap.zeros(3, dtype), lambda: heap.empty((2, 2), dtype),
              lambda: heap.full(3, 0, dtype), lambda: heap.zeros_like(np.zeros(2), dtype),
              lambda: heap.empty_like(np.zeros(2), dtype), lambda: pyarena.zeros(3, dtype),
              lambda: pyarena.empty(3, dtype), lambda: heap.zeros(0, dtype)):
        with pytest.raises(TypeError):
            f()
    _after_error(heap, before)


def test_full_object_fill_inference_refused(heap):
    with pytest.raises(TypeError):
        heap.full(3, None)
    with pytest.raises(TypeError):
        heap.full(3, [object(), object(), object()])


@pytest.mark.parametrize("shape", [-1, (-1,), (2, -3), (0, -1), np.int64(-5), (3, np.int8(-1)),
                                   -2**40])
def test_negative_dims(heap, shape):
    before = objects(heap)
    with pytest.raises(ValueError, match="negative dimensions are not allowed"):
        np.zeros(shape)
    for f in (heap.zeros, heap.empty, pyarena.zeros, pyarena.empty):
        with pytest.raises(ValueError, match="negative dimensions are not allowed"):
            f(shape)
    with pytest.raises(ValueError, match="negative dimensions are not allowed"):
        heap.full(shape, 1)
    with pytest.raises(ValueError, match="negative dimensions are not allowed"):
        heap.zeros_like(np.zeros(2), shape=shape)
    _after_error(heap, before)


@pytest.mark.parametrize("shape, dtype", [((2**40, 2**40), "f8"), (2**62, "f8"),
                                          ((2**31, 2**31, 4), "f8"), ((2**32, 2**32), "u1"),
                                          ((2**20, 2**40), "(2,3)f8"), (2**61, "c16")])
def test_overflow_too_big(heap, shape, dtype):
    before = objects(heap)
    with pytest.raises(ValueError, match="array is too big") as exc:
        np.zeros(shape, dtype)
    for f in (heap.zeros, heap.empty):
        with pytest.raises(ValueError, match="array is too big"):
            f(shape, dtype)
    with pytest.raises(ValueError, match="array is too big"):
        heap.full(shape, 0, dtype)
    assert "maximum possible size" in str(exc.value)
    _after_error(heap, before)


def test_overflow_with_a_zero_dim(heap):
    # numpy checks every nonzero dim for overflow even when another is 0
    before = objects(heap)
    with pytest.raises(ValueError, match="array is too big"):
        np.zeros((0, 2**40, 2**40))
    with pytest.raises(ValueError, match="array is too big"):
        heap.zeros((0, 2**40, 2**40))
    _after_error(heap, before)


@pytest.mark.parametrize("shape", [2**70, (2**70,), (3, 2**64), 2**63, (np.uint64(2**63),)],
                         ids=_ids)
def test_maximum_dimension_exceeded(heap, shape):
    before = objects(heap)
    with pytest.raises(ValueError, match="Maximum allowed dimension exceeded"):
        np.zeros(shape)
    for f in (heap.zeros, heap.empty, pyarena.zeros):
        with pytest.raises(ValueError, match="Maximum allowed dimension exceeded"):
            f(shape)
    _after_error(heap, before)


@pytest.mark.parametrize("nbytes", [2**44, 2**47 + 1, 2**50, 2**60, 2**62])
def test_unmappable_size_memory_error(heap, nbytes):
    if nbytes < 2**47:
        with open("/proc/sys/vm/overcommit_memory") as fh:
            if fh.read().strip() == "1":
                pytest.skip("overcommit_memory=1 maps anything")
    before = objects(heap)
    sys_before = heap.stats().heap_sys
    with pytest.raises(MemoryError, match="Unable to allocate"):
        heap.zeros(nbytes, np.uint8)
    with pytest.raises(MemoryError, match="Unable to allocate"):
        heap.empty((nbytes // 8,), "f8")
    with pytest.raises(MemoryError, match="Unable to allocate"):
        heap.full(nbytes // 16, 1, "c16")
    with pytest.raises(MemoryError, match="Unable to allocate"):
        heap.zeros_like(np.zeros(1), shape=nbytes // 8)
    assert heap.stats().heap_sys == sys_before
    _after_error(heap, before)


@pytest.mark.parametrize("shape", [2.0, (2.0, 3), (3, 1.5), "3", ("3",), None, [2, None],
                                   np.float64(3)], ids=_ids)
def test_bad_shape_type(heap, shape):
    before = objects(heap)
    with pytest.raises(TypeError):
        np.zeros(shape)
    with pytest.raises(TypeError):
        heap.zeros(shape)
    with pytest.raises(TypeError):
        heap.empty(shape)
    with pytest.raises(TypeError):
        heap.full(shape, 1)
    _after_error(heap, before)


def test_ndarray_as_shape(heap):
    # numpy.zeros takes an integer array as the shape
    for shape in [np.array([2, 3]), np.array([4], dtype=np.int32), np.array([], dtype=int),
                  np.array(5), np.arange(1, 4, dtype=np.uint8)]:
        ref = np.zeros(shape)
        for f in (heap.zeros, heap.empty, pyarena.zeros):
            out = f(shape)
            assert out.shape == ref.shape
        assert heap.full(shape, 2).shape == ref.shape
        assert heap.zeros_like(np.zeros(1), shape=shape).shape == ref.shape


def test_bool_shape_refused_like_numpy(heap):
    with pytest.raises(TypeError):
        np.zeros(True)
    with pytest.raises(TypeError):
        heap.zeros(True)


def test_too_many_dims(heap):
    before = objects(heap)
    ok = heap.zeros((1,) * 64)
    assert_like_numpy(ok, np.zeros((1,) * 64))
    del ok
    for shape, dt in [((1,) * 65, "f8"), ((1,) * 100, "u1"), ((1,) * 63, "(2,2)f8"),
                      ((1,) * 64, "(2,)f8"), ((0,) * 65, "f8")]:
        with pytest.raises(ValueError):
            np.zeros(shape, dt)
        with pytest.raises(ValueError):
            heap.zeros(shape, dt)
        with pytest.raises(ValueError):
            heap.empty(shape, dt)
    with pytest.raises(ValueError, match="64"):
        heap.zeros((1,) * 65)
    _after_error(heap, before)


@pytest.mark.parametrize("order", ["X", "K", "A", "", "CF", 3])
def test_bad_order(heap, order):
    before = objects(heap)
    with pytest.raises((ValueError, TypeError)):
        np.zeros(3, order=order)
    for f in (heap.zeros, heap.empty, pyarena.zeros, pyarena.empty):
        with pytest.raises((ValueError, TypeError)):
            f(3, float, order)
    with pytest.raises((ValueError, TypeError)):
        heap.full(3, 1, None, order)
    _after_error(heap, before)


def test_lowercase_order_accepted_like_numpy(heap):
    # numpy accepts 'c'/'f' for zeros and 'k'/'a'/'c'/'f' for *_like
    for o in "cf":
        ref = np.zeros((2, 3), order=o)
        assert_like_numpy(heap.zeros((2, 3), order=o), ref)
    t = np.zeros((3, 4)).T
    for o in "kacf":
        assert_like_numpy(heap.zeros_like(t, order=o), np.zeros_like(t, order=o))


def test_bad_dtype(heap):
    before = objects(heap)
    for dt in ["not-a-dtype", "f7", 3.5, "(2,)S"]:
        with pytest.raises(TypeError if dt == 3.5 else (TypeError, ValueError)):
            heap.zeros(3, dt)
    _after_error(heap, before)


def test_errors_interleaved_with_allocations(heap):
    keep = []
    for i in range(50):
        keep.append(heap.zeros(i * 37 + 1))
        with pytest.raises(ValueError):
            heap.zeros(-i - 1)
        with pytest.raises(TypeError):
            heap.zeros(3, "O")
        with pytest.raises(ValueError):
            heap.zeros((2**40, 2**40))
        with pytest.raises(MemoryError):
            heap.zeros(2**55, np.uint8)
    assert objects(heap) == 50
    for a in keep:
        assert not a.any()
    del keep, a
    check_heap(heap)
    assert objects(heap) == 0


# ---------------------------------------------------------------------------
# pickling, arithmetic, copies


@pytest.mark.parametrize("dtype", ["f8", "i2", "c16", "M8[s]", "S5", "U3",
                                   [("a", "i4", (2,)), ("b", "f8")], "(2,3)f4"], ids=_ids)
def test_pickle_round_trip(heap, dtype):
    a = heap.zeros((3, 4), dtype)
    raw = raw_bytes(a)
    raw[:] = np.arange(raw.size) % 7
    for proto in (2, pickle.HIGHEST_PROTOCOL):
        b = pickle.loads(pickle.dumps(a, protocol=proto))
        assert type(b) is np.ndarray
        assert b.dtype == a.dtype and b.shape == a.shape
        assert b.tobytes() == a.tobytes()
    f = heap.full((3, 5), 2.5, order="F")
    g = pickle.loads(pickle.dumps(f))
    assert np.array_equal(f, g) and g.flags.f_contiguous


def test_pickle_protocol5_out_of_band_keeps_memory(heap):
    a = heap.full(1000, 3.0)
    bufs = []
    data = pickle.dumps(a, protocol=5, buffer_callback=bufs.append)
    b = pickle.loads(data, buffers=bufs)
    assert np.shares_memory(a, b)
    del a, bufs, data
    gc.collect()
    assert objects(heap) == 1
    assert b.sum() == 3000.0
    del b
    gc.collect()
    assert objects(heap) == 0


def test_dlpack_view_keeps_memory(heap):
    a = heap.full(10, 2.0)
    x = np.from_dlpack(a)
    assert np.shares_memory(a, x)
    del a
    gc.collect()
    assert objects(heap) == 1 and x.sum() == 20.0
    del x
    gc.collect()
    assert objects(heap) == 0


def test_heap_in_reference_cycle_with_its_arrays():
    h = Heap()
    keep = h.full(10, 5)
    cyc = [h, h.zeros(10), h.zeros(MiB)]
    cyc.append(cyc)
    del h, cyc
    gc.collect()
    assert (keep == 5).all()
    keep[:] = 6
    del keep
    gc.collect()


def test_arithmetic_and_copy(heap):
    a = heap.zeros((10, 10))
    a += np.arange(100.0).reshape(10, 10)
    b = a + 1
    assert np.array_equal(b, np.arange(100.0).reshape(10, 10) + 1)
    assert np.sum(a) == sum(range(100))
    assert (a @ np.eye(10) == a).all()
    assert a.mean() == 49.5
    c = np.copy(a)
    assert type(c) is np.ndarray and np.array_equal(c, a)
    assert get_handler_name(c) != "pyarena"
    assert not heap.owns(c)
    assert c.ctypes.data != a.ctypes.data
    c[0, 0] = 123
    assert a[0, 0] == 0
    d = a.copy()
    assert not heap.owns(d)
    # in-place ufunc keeps the heap memory
    addr = a.ctypes.data
    np.multiply(a, 2, out=a)
    assert a.ctypes.data == addr and heap.owns(a)
    s = heap.full(5, 3, "i4")
    assert s.tolist() == [3] * 5
    assert (s * s).sum() == 45


def test_results_of_operations_are_not_heap_memory(heap):
    before = objects(heap)
    a = heap.zeros(1000)
    results = [a + 1, np.sqrt(a), a.astype("f4"), a.reshape(10, 100).T.copy()]
    assert objects(heap) == before + 1
    for r in results:
        assert not heap.owns(r)
    del a, results
    assert objects(heap) == before


# ---------------------------------------------------------------------------
# threads


def test_threads_share_one_heap():
    h = Heap()
    errors = []
    sizes = [1, 2, 5, 16, 33, 100, 257, 1000, 2048, 4097, 10000]
    big = [MiB // 8, 3 * MiB // 8]
    barrier = threading.Barrier(4)

    def worker(tid):
        try:
            rng = random.Random(tid)
            held = []
            barrier.wait()
            for i in range(2000):
                if i % 250 == 0:
                    n = rng.choice(big)
                else:
                    n = rng.choice(sizes)
                kind = rng.randrange(4)
                if kind == 0:
                    a = h.zeros(n, "i8")
                    assert not a.any(), f"t{tid} i{i}: zeros not zero"
                elif kind == 1:
                    a = h.zeros((n, 1), "i8", "F")
                    assert not a.any(), f"t{tid} i{i}: zeros not zero"
                    a = a.reshape(-1)
                elif kind == 2:
                    a = h.empty(n, "i8")
                else:
                    a = h.full(n, -tid - 1, "i8")
                    assert (a == -tid - 1).all()
                val = tid * 1000000 + i
                a[:] = val
                held.append((a, val))
                if len(held) > 16:
                    old, v = held.pop(rng.randrange(len(held)))
                    assert (old == v).all(), f"t{tid}: someone overwrote my array"
                    del old
            for a, v in held:
                assert (a == v).all(), f"t{tid}: someone overwrote my array"
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    keep = h.full(100, 42, "i4")
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    gc.collect()
    check_heap(h)
    assert h.stats().heap_objects == 1   # only `keep`
    assert (keep == 42).all()
    del keep
    assert h.stats().heap_objects == 0
    check_heap(h)
    h.close()


def test_arrays_freed_in_other_threads():
    h = Heap()
    arrs = [h.zeros(n) for n in [1, 10, 100, 1000, 10000, 300000] * 20]
    for a in arrs:
        a[:] = 1
    del a

    def drop(chunk):
        for a in chunk:
            assert (a == 1).all()
        chunk.clear()

    chunks = [arrs[i::4] for i in range(4)]
    del arrs
    threads = [threading.Thread(target=drop, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    del chunks
    gc.collect()
    assert h.stats().heap_objects == 0
    check_heap(h)
    for n in [1, 10, 100, 1000, 10000, 300000]:
        assert not h.zeros(n).any()
    h.close()


def test_short_lived_threads(heap):
    # Thread ids are reused as soon as a thread has ended: a thread that
    # takes over an ended thread's id must not take over its cache.
    kept = []
    for k in range(30):
        def worker(k=k):
            mine = [heap.zeros(n, "i4") for n in (1, 7, 100, 3000, 20000)]
            for a in mine:
                assert not a.any()
                a[:] = k
            kept.extend(mine[::2])
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        m = heap.zeros(50, "i4")       # the main thread in between
        assert not m.any()
        m[:] = -1
        kept.append(m)
    gc.collect()
    for i, a in enumerate(kept):
        assert len(np.unique(a)) == 1
    assert objects(heap) == len(kept)
    check_heap(heap)
    del kept, a, m
    gc.collect()
    assert objects(heap) == 0
    check_heap(heap)


def _run_isolated(code: str):
    """Run code in a fresh interpreter (a crash must not take the test
    session down); return the CompletedProcess."""
    # The directory holding the imported pyarena package first on the path:
    # the installed one in CI, the in-place build in development.
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(pyarena.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(code)],
                          env=env, capture_output=True, text=True, timeout=60)


def test_other_thread_allocates_through_handler_after_heap_deleted():
    # A thread that allocated from a heap keeps a per-thread cache entry;
    # when the Heap object dies its arrays live on and NumPy may allocate
    # through the heap's handler (ndarray.resize) from that thread.
    r = _run_isolated("""
        import gc, threading, numpy as np, pyarena
        h = pyarena.Heap()
        go = threading.Event(); ready = threading.Event(); out = {}
        def worker():
            a = h.zeros(100)
            ready.set(); go.wait()
            a.resize(3000, refcheck=False)
            a[:] = 1
            out['sum'] = float(a.sum())
        t = threading.Thread(target=worker); t.start()
        ready.wait()
        del h; gc.collect()
        go.set(); t.join()
        assert out['sum'] == 3000.0, out
        print("OK")
    """)
    assert r.returncode == 0 and "OK" in r.stdout, (r.returncode, r.stderr[-2000:])


def test_other_thread_allocates_through_handler_after_heap_closed():
    # close() with no live objects lets go of the mheap, but a zero-size
    # array still holds the heap's handler; resizing it in a thread that
    # had allocated from the heap must not crash: a closed heap refuses to
    # allocate (MemoryError from NumPy) and the array stays as it was.
    r = _run_isolated("""
        import gc, threading, numpy as np, pyarena
        h = pyarena.Heap()
        go = threading.Event(); ready = threading.Event(); out = {}
        def worker():
            z = h.zeros(0)
            b = h.zeros(100); del b
            ready.set(); go.wait()
            try:
                z.resize(3000, refcheck=False)
            except MemoryError:
                out['refused'] = z.shape
        t = threading.Thread(target=worker); t.start()
        ready.wait()
        h.close()
        go.set(); t.join()
        assert out['refused'] == (0,), out
        print("OK")
    """)
    assert r.returncode == 0 and "OK" in r.stdout, (r.returncode, r.stderr[-2000:])


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signals go to the main thread")
def test_interrupted_large_zeros_leaves_heap_consistent(heap):
    # A signal during the chunked clear of a big dirty object must stop the
    # clear part way (the handler's exception comes out of zeros(), which
    # never returns the half-cleared array) and leave the heap consistent.
    # The clear's own record shows the interrupt landed inside it.
    class Interrupt(Exception):
        pass

    def handler(signum, frame):
        raise Interrupt

    n = 128 * MiB
    before = _testing.clear_interruptions()[0]
    inside = 0
    old = signal.signal(signal.SIGALRM, handler)
    try:
        for _ in range(5):
            dirty = heap.empty(n, np.uint8)
            dirty[:] = 255
            del dirty
            a = None
            try:
                signal.setitimer(signal.ITIMER_REAL, 0.002)
                a = heap.zeros(n, np.uint8)
                time.sleep(0.05)
            except Interrupt:
                count, done, total = _testing.clear_interruptions()
                if count > before + inside:
                    inside += 1
                    assert a is None                  # zeros() raised
                    assert 0 < done < total == n      # stopped part way
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            if a is not None:
                assert not a.any()
            del a
            gc.collect()
            assert objects(heap) == 0
            check_heap(heap)
    finally:
        signal.signal(signal.SIGALRM, old)
    assert inside >= 1, "no signal ever interrupted the clear"
    b = heap.zeros(n, np.uint8)
    assert not b.any()
