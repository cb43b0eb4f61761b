"""Typed allocation: Heap.new / Heap.newarray (Go's newobject, newarray) for
NumPy dtypes and ctypes types, and reflect.unsafe_New / unsafe_NewArray on
the default heap: zeroed contents, types and shapes, alignment, ownership,
lifetimes, zero-size types, the size checks of newarray and the refusal of
types holding Python object references."""

from __future__ import annotations

import copy
import ctypes
import gc
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import pyarena
from pyarena import Heap
from pyarena import reflect

OUT_OF_RANGE = "allocation size out of range"


def zerobase(heap):
    return heap.alloc(0).address


# -- NumPy dtypes ------------------------------------------------------------

NESTED = np.dtype([
    ("a", "f8"),
    ("b", [("c", "i4"), ("d", "u1", (3,))]),
    ("e", "f4", (2, 2)),
    ("f", "S3"),
])
ALIGNED = np.dtype([("a", "u1"), ("b", "f8"), ("c", "i2")], align=True)

SCALAR_DTYPES = [
    "b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8",
    "f2", "f4", "f8", np.longdouble,
    "c8", "c16", np.clongdouble,
    "M8[ns]", "m8[s]", "S5", "U3", "V8",
    NESTED, ALIGNED,
]


def _id(t):
    return str(np.dtype(t))


def assert_zero_array(a):
    assert a.tobytes() == bytes(a.nbytes)


@pytest.mark.parametrize("t", SCALAR_DTYPES, ids=_id)
def test_new_dtype_is_zeroed_0d_array_in_heap(heap, t):
    d = np.dtype(t)
    p = heap.new(t)
    assert isinstance(p, np.ndarray)
    assert p.shape == ()
    assert p.dtype == d
    assert p.nbytes == d.itemsize
    assert p.flags.writeable
    assert p.ctypes.data % d.alignment == 0
    assert p.ctypes.data % 16 == 0 or d.itemsize < 16
    assert_zero_array(p)
    assert heap.owns(p)
    assert heap.owns(p.ctypes.data)


@pytest.mark.parametrize("t", SCALAR_DTYPES, ids=_id)
@pytest.mark.parametrize("n", [1, 5, 1000])
def test_newarray_dtype_is_zeroed_1d_array_in_heap(heap, t, n):
    d = np.dtype(t)
    a = heap.newarray(t, n)
    assert isinstance(a, np.ndarray)
    assert a.shape == (n,)
    assert a.dtype == d
    assert a.nbytes == n * d.itemsize
    assert a.flags.c_contiguous and a.flags.writeable
    assert a.ctypes.data % d.alignment == 0
    assert_zero_array(a)
    assert heap.owns(a)


@pytest.mark.parametrize("t", SCALAR_DTYPES, ids=_id)
def test_newarray_dtype_zero_count_is_empty(heap, t):
    a = heap.newarray(t, 0)
    assert a.shape == (0,)
    assert a.dtype == np.dtype(t)
    assert a.ctypes.data == zerobase(heap)


def test_new_dtype_values_are_writable_and_independent(heap):
    p = heap.new("f8")
    q = heap.new("f8")
    p[()] = 1.5
    assert q[()] == 0.0 and p[()] == 1.5
    assert p.ctypes.data != q.ctypes.data
    a = heap.newarray("i4", 10)
    a[:] = np.arange(10)
    assert a.tolist() == list(range(10))


def test_new_nested_struct_dtype_fields(heap):
    p = heap.new(NESTED)
    assert p["a"] == 0 and p["b"]["c"] == 0 and p["f"] == b""
    assert p["b"]["d"].shape == (3,) and p["e"].shape == (2, 2)
    p["a"] = 1.5
    p["b"]["c"] = -7
    p["b"]["d"] = [1, 2, 3]
    p["e"] = [[1, 2], [3, 4]]
    p["f"] = b"xyz"
    assert p["a"] == 1.5
    assert p["b"]["c"] == -7
    assert p["b"]["d"].tolist() == [1, 2, 3]
    assert p["e"].tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert p["f"] == b"xyz"
    # The writes went to heap memory.
    raw = ctypes.string_at(p.ctypes.data, NESTED.itemsize)
    assert np.frombuffer(raw, NESTED)[0]["b"]["c"] == -7


def test_new_aligned_struct_dtype_layout(heap):
    assert ALIGNED.isalignedstruct
    p = heap.new(ALIGNED)
    assert p.dtype.fields["b"][1] == 8
    assert p.ctypes.data % ALIGNED.alignment == 0
    a = heap.newarray(ALIGNED, 7)
    assert a.ctypes.data % ALIGNED.alignment == 0
    for i in range(7):
        # every element's f8 field is aligned
        assert (a.ctypes.data + i * ALIGNED.itemsize + 8) % 8 == 0
    a["b"] = np.arange(7)
    assert a["b"].tolist() == list(range(7)) and not a["a"].any() and not a["c"].any()


def test_new_subarray_dtype_gives_array_of_subshape(heap):
    p = heap.new("(2,3)f8")
    assert p.shape == (2, 3)
    assert p.dtype == np.dtype("f8")
    assert_zero_array(p)
    assert p.ctypes.data % 8 == 0
    assert heap.owns(p)
    p[1, 2] = 4.0
    assert p.sum() == 4.0
    a = heap.newarray("(2,3)f8", 4)
    assert a.shape == (4, 2, 3) and a.dtype == np.dtype("f8")
    assert_zero_array(a)
    assert heap.owns(a)
    assert heap.newarray("(2,3)f8", 0).shape == (0, 2, 3)


def test_new_dtype_like_arguments_accepted(heap):
    assert heap.new(float).dtype == np.dtype(float)
    assert heap.new(np.int16).dtype == np.dtype(np.int16)
    assert heap.new("i4,f8").dtype == np.dtype("i4,f8")
    assert heap.newarray([("x", "f4"), ("y", "f4")], 3).dtype == np.dtype(
        [("x", "f4"), ("y", "f4")])


def test_new_dtype_memory_stays_while_array_lives(heap):
    p = heap.new(NESTED)
    p["a"] = 2.5
    addr = p.ctypes.data
    before = heap.stats().heap_objects
    fillers = [heap.new(NESTED) for _ in range(2000)]
    assert all(f.ctypes.data != addr for f in fillers)
    assert p["a"] == 2.5
    del fillers
    gc.collect()
    assert heap.owns(addr)
    del p
    gc.collect()
    assert heap.stats().heap_objects == before - 1


def test_new_zero_size_dtype_is_zerobase(heap):
    empty = np.dtype([])
    assert empty.itemsize == 0
    z = zerobase(heap)
    assert heap.new(empty).ctypes.data == z
    assert heap.newarray(empty, 10).ctypes.data == z
    assert heap.newarray("f8", 0).ctypes.data == z
    assert heap.newarray("(2,3)f8", 0).ctypes.data == z


# -- ctypes --------------------------------------------------------------------

class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_double), ("y", ctypes.c_double)]


class Inner(ctypes.Structure):
    _fields_ = [("tag", ctypes.c_int16), ("value", ctypes.c_double)]


class Outer(ctypes.Structure):
    _fields_ = [("flag", ctypes.c_char), ("inner", Inner), ("tail", ctypes.c_uint32)]


class WithArray(ctypes.Structure):
    _fields_ = [("n", ctypes.c_int32), ("data", ctypes.c_int16 * 5), ("m", ctypes.c_uint8)]


class Num(ctypes.Union):
    _fields_ = [("i", ctypes.c_int64), ("d", ctypes.c_double), ("b", ctypes.c_uint8 * 8)]


class LongDoubleStruct(ctypes.Structure):
    _fields_ = [("c", ctypes.c_char), ("ld", ctypes.c_longdouble)]


class Empty(ctypes.Structure):
    _fields_ = []


CTYPES = [
    ctypes.c_double, ctypes.c_int8, ctypes.c_char, ctypes.c_bool, ctypes.c_uint64,
    ctypes.c_float, ctypes.c_longdouble, ctypes.c_void_p,
    Point, Inner, Outer, WithArray, Num, LongDoubleStruct,
    ctypes.c_int * 4, Point * 3, (ctypes.c_uint8 * 3) * 2,
    ctypes.POINTER(ctypes.c_int),
]


def _cid(t):
    return t.__name__


def assert_zero_ctypes(p):
    size = ctypes.sizeof(p)
    assert ctypes.string_at(ctypes.addressof(p), size) == bytes(size)


@pytest.mark.parametrize("t", CTYPES, ids=_cid)
def test_new_ctypes_is_zeroed_instance_in_heap(heap, t):
    p = heap.new(t)
    assert type(p) is t
    assert ctypes.sizeof(p) == ctypes.sizeof(t)
    assert ctypes.addressof(p) % ctypes.alignment(t) == 0
    assert_zero_ctypes(p)
    assert heap.owns(ctypes.addressof(p))
    assert heap.owns(ctypes.addressof(p) + ctypes.sizeof(t) - 1)


@pytest.mark.parametrize("t", CTYPES, ids=_cid)
@pytest.mark.parametrize("n", [1, 7, 600])
def test_newarray_ctypes_is_zeroed_array_instance(heap, t, n):
    a = heap.newarray(t, n)
    assert type(a) is t * n
    assert len(a) == n
    assert ctypes.sizeof(a) == n * ctypes.sizeof(t)
    assert ctypes.addressof(a) % ctypes.alignment(t) == 0
    assert_zero_ctypes(a)
    assert heap.owns(ctypes.addressof(a))
    assert heap.owns(ctypes.addressof(a) + ctypes.sizeof(a) - 1)


@pytest.mark.parametrize("t", [ctypes.c_double, Point, ctypes.c_int * 4], ids=_cid)
def test_newarray_ctypes_zero_count(heap, t):
    a = heap.newarray(t, 0)
    assert type(a) is t * 0
    assert len(a) == 0 and ctypes.sizeof(a) == 0
    assert ctypes.addressof(a) == zerobase(heap)


def test_new_simple_ctypes_values_assignable(heap):
    d = heap.new(ctypes.c_double)
    d.value = 1.5
    assert ctypes.c_double.from_address(ctypes.addressof(d)).value == 1.5
    i = heap.new(ctypes.c_int8)
    i.value = -5
    assert i.value == -5
    c = heap.new(ctypes.c_char)
    assert c.value == b"\x00"
    c.value = b"z"
    assert ctypes.string_at(ctypes.addressof(c), 1) == b"z"
    b = heap.new(ctypes.c_bool)
    assert b.value is False
    b.value = True
    assert b.value is True


def test_new_structure_field_assignment_writes_heap_memory(heap):
    p = heap.new(Point)
    assert (p.x, p.y) == (0.0, 0.0)
    p.x = 1.5
    p.y = -2.25
    raw = ctypes.string_at(ctypes.addressof(p), ctypes.sizeof(Point))
    assert np.frombuffer(raw, "f8").tolist() == [1.5, -2.25]


def test_new_nested_structure(heap):
    o = heap.new(Outer)
    assert o.flag == b"\x00" and o.inner.tag == 0 and o.inner.value == 0.0 and o.tail == 0
    o.inner.tag = 12
    o.inner.value = 3.5
    o.tail = 0xDEADBEEF
    # the nested structure lies inside the outer one's heap memory
    assert ctypes.addressof(o.inner) == ctypes.addressof(o) + Outer.inner.offset
    assert heap.owns(ctypes.addressof(o.inner))
    again = Outer.from_address(ctypes.addressof(o))
    assert (again.inner.tag, again.inner.value, again.tail) == (12, 3.5, 0xDEADBEEF)


def test_new_structure_with_array_field(heap):
    w = heap.new(WithArray)
    assert list(w.data) == [0] * 5
    w.data[2] = -3
    w.data[4] = 7
    w.n = 5
    assert list(w.data) == [0, 0, -3, 0, 7]
    assert WithArray.from_address(ctypes.addressof(w)).data[4] == 7


def test_new_union_shares_memory(heap):
    u = heap.new(Num)
    assert u.i == 0 and u.d == 0.0 and list(u.b) == [0] * 8
    u.d = 1.0
    assert u.i == 0x3FF0000000000000
    assert u.b[7] == 0x3F


def test_new_ctypes_array_type(heap):
    a = heap.new(ctypes.c_int * 4)
    assert list(a) == [0, 0, 0, 0]
    a[3] = 9
    assert list((ctypes.c_int * 4).from_address(ctypes.addressof(a))) == [0, 0, 0, 9]


def test_new_pointer_type_is_null_and_holds_an_address(heap):
    pp = heap.new(ctypes.POINTER(ctypes.c_int))
    assert not pp  # NULL
    target = heap.new(ctypes.c_int)
    target.value = 77
    pp.contents = target
    assert pp[0] == 77
    assert ctypes.c_void_p.from_address(ctypes.addressof(pp)).value == ctypes.addressof(target)


def test_newarray_ctypes_elements_assignable(heap):
    pts = heap.newarray(Point, 10)
    for i in range(10):
        pts[i].x = i
        pts[i].y = -i
    assert [(p.x, p.y) for p in pts] == [(float(i), float(-i)) for i in range(10)]
    assert ctypes.addressof(pts[3]) == ctypes.addressof(pts) + 3 * ctypes.sizeof(Point)


def test_long_double_alignment(heap):
    for _ in range(20):
        v = heap.new(ctypes.c_longdouble)
        assert ctypes.addressof(v) % ctypes.alignment(ctypes.c_longdouble) == 0
        s = heap.new(LongDoubleStruct)
        assert ctypes.addressof(s) % ctypes.alignment(LongDoubleStruct) == 0
        a = heap.newarray(LongDoubleStruct, 3)
        assert ctypes.addressof(a) % ctypes.alignment(LongDoubleStruct) == 0


@pytest.mark.parametrize("make", [
    lambda h: h.new(Point),
    lambda h: h.new(ctypes.c_int * 4),
    lambda h: h.newarray(Point, 5),
    lambda h: h.new(ctypes.c_int8),
], ids=["struct", "array-type", "newarray", "c_int8"])
def test_ctypes_instance_keeps_memory_alive(heap, make):
    p = make(heap)
    addr = ctypes.addressof(p)
    size = ctypes.sizeof(p)
    pattern = bytes((i * 37 + 11) & 0xFF for i in range(size))
    ctypes.memmove(addr, pattern, size)
    before = heap.stats().heap_objects
    assert before >= 1
    gc.collect()
    # allocate plenty of values of the same size class and bigger
    others = [make(heap) for _ in range(3000)]
    others += [heap.alloc(size) for _ in range(3000)]
    for o in others:
        oa = o.address if isinstance(o, pyarena.Block) else ctypes.addressof(o)
        assert not (oa < addr + size and addr < oa + max(len(o) if isinstance(o, pyarena.Block)
                                                          else ctypes.sizeof(o), 1))
    del others, o
    gc.collect()
    assert ctypes.string_at(addr, size) == pattern
    assert heap.owns(addr)
    assert heap.stats().heap_objects == before
    del p
    gc.collect()
    assert heap.stats().heap_objects == before - 1
    assert not heap.owns(addr)


def test_derived_ctypes_objects_keep_memory_alive(heap):
    # A field of a structure, an element of an array: ctypes objects that
    # share the parent's memory must keep it alive after the parent's name
    # is gone.
    inner = heap.new(Outer).inner
    elem = heap.newarray(Point, 8)[5]
    row = heap.new((ctypes.c_uint8 * 4) * 4)[2]
    inner.tag = 321
    inner.value = 6.5
    elem.x = 9.25
    row[3] = 200
    gc.collect()
    junk = [heap.new(Outer) for _ in range(500)] + [heap.newarray(Point, 8) for _ in range(500)]
    for j in junk:
        ctypes.memset(ctypes.addressof(j), 0xEE, ctypes.sizeof(j))
    del junk, j
    gc.collect()
    assert (inner.tag, inner.value) == (321, 6.5)
    assert elem.x == 9.25 and elem.y == 0.0
    assert list(row) == [0, 0, 0, 200]
    assert heap.owns(ctypes.addressof(inner)) and heap.owns(ctypes.addressof(elem))


class Ints4(ctypes.Array):
    # a named array type, so that pickle can find it
    _type_ = ctypes.c_int
    _length_ = 4


@pytest.mark.parametrize("make", [
    lambda h: h.new(Point),
    lambda h: h.new(ctypes.c_double),
    lambda h: h.new(Ints4),
    lambda h: h.new(Outer),
    lambda h: reflect.unsafe_New(Point),
], ids=["struct", "c_double", "array-type", "nested-struct", "reflect"])
def test_ctypes_value_pickles_and_copies_like_a_plain_instance(heap, make):
    # An instance of t should behave as one: a plain Point, a from_buffer
    # Point both pickle and deepcopy; so must a heap Point.
    p = make(heap)
    size = ctypes.sizeof(p)
    pattern = bytes(range(1, size + 1))
    ctypes.memmove(ctypes.addressof(p), pattern, size)
    plain = type(p).from_buffer_copy(pattern)
    assert ctypes.string_at(ctypes.addressof(pickle.loads(pickle.dumps(plain))), size) == pattern
    for dup in (pickle.loads(pickle.dumps(p)), copy.deepcopy(p), copy.copy(p)):
        assert type(dup) is type(p)
        assert ctypes.addressof(dup) != ctypes.addressof(p)
        assert ctypes.string_at(ctypes.addressof(dup), size) == pattern


def test_copy_of_ctypes_value_does_not_pin_heap_memory(heap):
    p = heap.new(Point)
    p.x = 4.0
    addr = ctypes.addressof(p)
    before = heap.stats().heap_objects
    q = copy.copy(p)             # a copy in its own (ctypes) memory
    assert q.x == 4.0 and ctypes.addressof(q) != addr
    del p
    gc.collect()
    # the heap value is gone although its copy lives
    assert heap.stats().heap_objects == before - 1
    assert not heap.owns(addr)
    assert q.x == 4.0


def test_new_empty_structure_shares_zerobase(heap):
    e = heap.new(Empty)
    assert type(e) is Empty and ctypes.sizeof(e) == 0
    z = heap.alloc(0).address
    assert ctypes.addressof(e) == z
    assert ctypes.addressof(heap.new(Empty)) == z
    assert ctypes.addressof(heap.newarray(Empty, 100)) == z
    assert ctypes.addressof(heap.newarray(ctypes.c_double, 0)) == z
    assert heap.new(np.dtype([])).ctypes.data == z


def test_zero_size_allocations_not_counted(heap):
    before = heap.stats().mallocs
    heap.new(Empty)
    heap.newarray(ctypes.c_int, 0)
    heap.newarray("f8", 0)
    assert heap.stats().mallocs == before


# -- newarray's size checks ---------------------------------------------------

def _snapshot(heap):
    s = heap.stats()
    return s.mallocs, s.frees, s.heap_sys, s.heap_inuse, s.total_alloc


@pytest.mark.parametrize("t", [ctypes.c_double, Point, "f8", NESTED, "(2,3)f8"],
                         ids=["c_double", "Point", "f8", "nested", "subarray"])
def test_newarray_negative_count_is_value_error(heap, t):
    before = _snapshot(heap)
    with pytest.raises(ValueError):
        heap.newarray(t, -1)
    with pytest.raises(ValueError):
        heap.newarray(t, -(2 ** 70))
    assert _snapshot(heap) == before


@pytest.mark.parametrize("t,size", [(ctypes.c_double, 8), (Point, 16), ("f8", 8),
                                    ("(2,3)f8", 48), (ctypes.c_int * 4, 16)],
                         ids=["c_double", "Point", "f8", "subarray", "c_int*4"])
def test_newarray_size_overflow_is_overflow_error(heap, t, size):
    before = _snapshot(heap)
    for n in [(1 << 64) // size + 1, 1 << 62, 1 << 64, 1 << 100]:
        with pytest.raises(OverflowError, match=OUT_OF_RANGE):
            heap.newarray(t, n)
    assert _snapshot(heap) == before


@pytest.mark.parametrize("t", [ctypes.c_double, "f8"], ids=["c_double", "f8"])
def test_newarray_past_address_space_is_memory_error(heap, t):
    before = _snapshot(heap)
    for n in [1 << 45, (1 << 47) // 8 + 1, ((1 << 64) - 1) // 8]:
        with pytest.raises(MemoryError, match=OUT_OF_RANGE):
            heap.newarray(t, n)
    assert _snapshot(heap) == before


def test_newarray_huge_error_is_not_overflow_below_size_max(heap):
    # 2**45 doubles = 2**48 bytes: fits size_t, so not an OverflowError
    with pytest.raises(MemoryError) as info:
        heap.newarray(ctypes.c_double, 1 << 45)
    assert not isinstance(info.value, OverflowError)
    assert OUT_OF_RANGE in str(info.value)


def test_newarray_count_must_be_integer(heap):
    with pytest.raises(TypeError):
        heap.newarray(ctypes.c_double, 2.0)
    with pytest.raises(TypeError):
        heap.newarray("f8", 2.0)
    assert heap.newarray("f8", np.int64(3)).shape == (3,)
    assert len(heap.newarray(ctypes.c_double, np.int32(3))) == 3


# -- types holding Python object references ----------------------------------

class HasObject(ctypes.Structure):
    _fields_ = [("x", ctypes.c_double), ("o", ctypes.py_object)]


class NestedObject(ctypes.Structure):
    _fields_ = [("n", ctypes.c_int), ("inner", HasObject)]


class UnionObject(ctypes.Union):
    _fields_ = [("i", ctypes.c_int64), ("o", ctypes.py_object)]


class ArrayOfObjects(ctypes.Structure):
    _fields_ = [("objs", ctypes.py_object * 2)]


OBJECT_CTYPES = [ctypes.py_object, HasObject, NestedObject, UnionObject, ArrayOfObjects,
                 ctypes.py_object * 3, HasObject * 2]
OBJECT_DTYPES = ["O", np.dtype([("a", "f8"), ("o", "O")]),
                 np.dtype([("a", "f8"), ("s", [("o", "O")])]), np.dtype(("O", (2,))),
                 np.dtype([("a", "O", (3,))])]


@pytest.mark.parametrize("t", OBJECT_CTYPES + OBJECT_DTYPES,
                         ids=[_cid(t) for t in OBJECT_CTYPES] + [str(np.dtype(t)) for t in
                                                                 OBJECT_DTYPES])
def test_types_with_object_references_refused(heap, t):
    before = _snapshot(heap)
    with pytest.raises(TypeError):
        heap.new(t)
    with pytest.raises(TypeError):
        heap.newarray(t, 4)
    with pytest.raises(TypeError):
        heap.newarray(t, 0)
    with pytest.raises(TypeError):
        reflect.unsafe_New(t)
    with pytest.raises(TypeError):
        reflect.unsafe_NewArray(t, 2)
    assert _snapshot(heap) == before


def test_pointer_type_is_not_an_object_reference(heap):
    # a pointer holds an address, not a reference: allowed
    class Node(ctypes.Structure):
        pass
    Node._fields_ = [("value", ctypes.c_int), ("next", ctypes.POINTER(Node))]
    n = heap.new(Node)
    assert n.value == 0 and not n.next
    m = heap.newarray(Node, 3)
    m[0].next = ctypes.pointer(m[1])
    m[1].value = 5
    assert m[0].next.contents.value == 5


# -- reflect ------------------------------------------------------------------

def test_reflect_unsafe_new_uses_default_heap():
    dh = pyarena.default_heap()
    p = reflect.unsafe_New(ctypes.c_double)
    assert type(p) is ctypes.c_double and p.value == 0.0
    assert dh.owns(ctypes.addressof(p))
    s = reflect.unsafe_New(Point)
    assert dh.owns(ctypes.addressof(s))
    assert (s.x, s.y) == (0.0, 0.0)
    a = reflect.unsafe_New(NESTED)
    assert a.shape == () and a.dtype == NESTED and dh.owns(a)
    assert_zero_array(a)
    assert a.ctypes.data % NESTED.alignment == 0


def test_reflect_unsafe_new_array_uses_default_heap():
    dh = pyarena.default_heap()
    a = reflect.unsafe_NewArray(ctypes.c_int, 10)
    assert type(a) is ctypes.c_int * 10 and list(a) == [0] * 10
    assert dh.owns(ctypes.addressof(a))
    b = reflect.unsafe_NewArray("f4", 33)
    assert b.shape == (33,) and b.dtype == np.dtype("f4") and dh.owns(b)
    assert_zero_array(b)
    z = reflect.unsafe_NewArray("f8", 0)
    assert z.ctypes.data == dh.alloc(0).address
    assert ctypes.addressof(reflect.unsafe_New(Empty)) == dh.alloc(0).address


def test_reflect_unsafe_new_array_errors():
    dh = pyarena.default_heap()
    before = dh.stats().mallocs
    with pytest.raises(ValueError):
        reflect.unsafe_NewArray(ctypes.c_double, -1)
    with pytest.raises(OverflowError, match=OUT_OF_RANGE):
        reflect.unsafe_NewArray(ctypes.c_double, 1 << 62)
    with pytest.raises(MemoryError, match=OUT_OF_RANGE):
        reflect.unsafe_NewArray("f8", 1 << 45)
    assert dh.stats().mallocs == before


def test_typed_values_not_in_persistent_alloc(heap):
    from pyarena._testing import in_persistent_alloc
    vals = [heap.new(Point), heap.newarray(ctypes.c_double, 1000), heap.new("f8"),
            heap.newarray("u1", 100000)]
    for v in vals:
        addr = v.ctypes.data if isinstance(v, np.ndarray) else ctypes.addressof(v)
        assert not in_persistent_alloc(heap, addr)
    st = heap.stats()
    assert st.metadata_sys > 0 and st.persistent_chunks >= 1


# -- closed heaps ---------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda h: h.new(ctypes.c_double),
    lambda h: h.new(Point),
    lambda h: h.newarray(ctypes.c_int, 4),
    lambda h: h.new("f8"),
    lambda h: h.newarray("f8", 4),
], ids=["new-c_double", "new-struct", "newarray-ctypes", "new-dtype", "newarray-dtype"])
def test_typed_allocation_from_closed_heap_raises(make):
    # Heap.alloc and the array constructors refuse a closed heap; new and
    # newarray must too, whatever the type.
    h = Heap()
    keep = h.alloc(64)          # a live block keeps the closed heap mapped
    h.close()
    before = h.stats().mallocs
    with pytest.raises(ValueError):
        make(h)
    assert h.stats().mallocs == before
    del keep


@pytest.mark.parametrize("expr", ["h.new(ctypes.c_double)", "h.newarray(ctypes.c_int, 4)",
                                  "h.new('f8')"])
def test_typed_allocation_from_destroyed_heap_does_not_crash(expr):
    # A heap closed with nothing alive is unmapped at once; allocating from
    # it must raise, not touch freed allocator state.
    code = ("import ctypes, pyarena\n"
            "h = pyarena.Heap(); h.close()\n"
            "try:\n"
            f"    {expr}\n"
            "except ValueError:\n"
            "    print('ValueError')\n")
    env = dict(os.environ)
    # The directory holding the imported pyarena first: the installed one
    # in CI, the in-place build in development.
    root = os.path.dirname(os.path.dirname(os.path.abspath(pyarena.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.strip() == "ValueError"
