# cython: language_level=3
"""NumPy's side of the allocator face: parse array requests into C values
and turn allocator memory into plain numpy.ndarray objects.

The face (_face.pyx: zeros/empty/full, the *_like functions, new and
newarray of every allocator) parses its arguments here, once, into an
arraySpec, allocates the array's bytes, and wraps them. A heap's array is
wrapped by PyArray_NewFromDescr over that memory, then the array is made
to own it (NPY_ARRAY_OWNDATA) with the heap's NEP 49 handler capsule as its
mem_handler, exactly as if NumPy had allocated it through that handler (an
arena's array has its chunk as base instead).
When the array dies NumPy hands the memory back through the handler's
free; views hold the array, so they keep the memory alive. No owner object
is made per array, and numpy's get_handler_name(arr) says "pyarena".

The common calls (zeros(n), zeros(n, dtype), zeros((a, b), dtype)) avoid
Python-level argument handling: the last dtype argument is remembered with
its descriptor facts (identity test), other types and strings map to cached
descriptors by a dict lookup, and int and tuple shapes are read with the C
API. The only object made per call is the array.
"""

cimport cython
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF, Py_DECREF
from cpython.pycapsule cimport PyCapsule_GetPointer
from pyarena._ndarray cimport PyDataMem_Handler
from cpython.long cimport PyLong_Check
from cpython.dict cimport PyDict_GetItem
from cpython.exc cimport PyErr_Clear, PyErr_Occurred, PyErr_ExceptionMatches
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_RECORDS_RO, PyBUF_SIMPLE
from libc.stdint cimport uintptr_t
from pyarena._types cimport NUMPY_TRACE_DOMAIN, PyTraceMalloc_Track

cdef extern from "Python.h":
    # The buffer request without Cython's exception check: BufferError is
    # retried with a simpler request.
    int getBuffer "PyObject_GetBuffer"(object obj, Py_buffer* view, int flags) noexcept

cdef extern from *:
    """
    /* The exporter behind a memoryview; NULL for one made over raw memory. */
    static inline PyObject *pyarena_memoryview_exporter(PyObject *mv) {
        return PyMemoryView_GET_BUFFER(mv)->obj;
    }
    """
    PyObject* memoryviewExporter "pyarena_memoryview_exporter"(PyObject* mv)

cdef extern from "Python.h":
    # Without Cython's error check: the caller turns overflow into NumPy's
    # ValueError.
    Py_ssize_t asSsize "PyLong_AsSsize_t"(object o) noexcept
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_SIZE, PyTuple_GET_ITEM
from pyarena._ndarray cimport npy_intp, MAXDIMS, ARRAY_ALIGN

import operator
import numpy as np

cdef extern from "numpy/arrayobject.h":
    ctypedef struct PyArray_Descr:
        pass
    # The array's C fields (no Python attribute lookups).
    int PyArray_NDIM_ "PyArray_NDIM"(PyObject* a)
    npy_intp* PyArray_DIMS_ "PyArray_DIMS"(PyObject* a)
    npy_intp* PyArray_STRIDES_ "PyArray_STRIDES"(PyObject* a)
    npy_intp PyArray_ITEMSIZE_ "PyArray_ITEMSIZE"(PyObject* a)
    void* PyArray_DATA_ "PyArray_DATA"(PyObject* a)
    int PyArray_FLAGS_ "PyArray_FLAGS"(PyObject* a)
    PyObject* PyArray_DESCR_ "PyArray_DESCR"(PyObject* a)
    PyObject* PyArray_BASE_ "PyArray_BASE"(PyObject* a)
    PyTypeObject PyArray_Type
    PyObject* PyArray_NewFromDescr(PyTypeObject* subtype, PyArray_Descr* descr, int nd,
                                   npy_intp* dims, npy_intp* strides, void* data,
                                   int flags, PyObject* obj)
    int PyArray_SetBaseObject(PyObject* arr, PyObject* base)
    int NPY_ARRAY_WRITEABLE, NPY_ARRAY_F_CONTIGUOUS, NPY_ARRAY_C_CONTIGUOUS
    int _import_array() except -1
    PyObject* PyDataMem_SetHandler(PyObject* handler)
    PyObject* PyDataMem_GetHandler()
    npy_intp PyDataType_ELSIZE(PyArray_Descr* d)
    bint PyDataType_HASSUBARRAY(PyArray_Descr* d)
    npy_intp PyDataType_ALIGNMENT(PyArray_Descr* d)

_import_array()

cdef object DTYPE = np.dtype
# dtype argument (a type, a string, ...) -> normalised descriptor. Bounded:
# cleared when it grows past DESCR_CACHE_MAX entries.
cdef dict _descrCache = {}
cdef enum:
    DESCR_CACHE_MAX = 512


cdef object _normalise(object dtype):
    """numpy.dtype(dtype), with flexible types given the size NumPy's own
    constructors give them ('S' -> 'S1'), and object references refused."""
    cdef object d
    d = np.dtype(float if dtype is None else dtype)
    if d.itemsize == 0 and d.names is None and d.subdtype is None:
        d = np.empty(0, dtype=d).dtype     # unsized 'S', 'U': size 1, as NumPy
    if d.hasobject:
        raise TypeError(f"pyarena memory cannot hold Python object references: dtype {d}")
    return d


# The last dtype argument seen, its descriptor and what the array path
# needs of it (_last, a descrCache): most code asks for the same dtype over
# and over, and an identity test is far cheaper than a dict lookup (which
# in 3.11 also saves and restores the error state) or NumPy 2's descriptor
# accessors. Heap reads it inline (theDescrCache).
cdef object _noKey = object()       # matches no dtype argument
cdef descrCache _last
_last.key = <PyObject*>_noKey
Py_INCREF(_noKey)
_last.descr = <PyObject*>None
Py_INCREF(None)


cdef descrCache* theDescrCache() noexcept:
    return &_last


cdef object descrOf(object dtype, Py_ssize_t* itemsize, size_t* align, bint* hassub):
    """The descriptor for a dtype argument, from the cache when it can, with
    its itemsize, the alignment its arrays get and whether it is a
    sub-array dtype."""
    cdef object d
    if <PyObject*>dtype != _last.key:
        d = _descrOf(dtype)
        if not (type(dtype) is type or type(dtype) is str or isinstance(dtype, DTYPE)):
            itemsize[0] = descrItemsize(d)
            align[0] = descrAlignment(d)
            hassub[0] = PyDataType_HASSUBARRAY(<PyArray_Descr*>d)
            return d
        Py_INCREF(dtype)
        Py_INCREF(d)
        Py_DECREF(<object>_last.key)
        Py_DECREF(<object>_last.descr)
        _last.key = <PyObject*>dtype
        _last.descr = <PyObject*>d
        _last.itemsize = descrItemsize(d)
        _last.align = descrAlignment(d)
        _last.hassub = PyDataType_HASSUBARRAY(<PyArray_Descr*>d)
    itemsize[0] = _last.itemsize
    align[0] = _last.align
    hassub[0] = _last.hassub
    return <object>_last.descr


cdef object _descrOf(object dtype):
    cdef object d
    cdef PyObject* hit
    if isinstance(dtype, DTYPE):
        if dtype.itemsize == 0 or dtype.hasobject:
            return _normalise(dtype)
        return dtype
    if type(dtype) is type or type(dtype) is str:
        hit = PyDict_GetItem(_descrCache, dtype)
        if hit != NULL:
            return <object>hit
    d = _normalise(dtype)
    if type(dtype) is type or type(dtype) is str:
        if len(_descrCache) >= DESCR_CACHE_MAX:
            _descrCache.clear()
        _descrCache[dtype] = d
    return d


cdef inline int _dim(object x, npy_intp* out) except -1:
    """One dimension: an int (or an object with __index__), >= 0."""
    cdef Py_ssize_t v
    if isinstance(x, bool):
        raise TypeError("an integer is required")
    if not PyLong_Check(x):
        try:
            x = operator.index(x)
        except TypeError:
            raise TypeError(f"'{type(x).__name__}' object cannot be interpreted "
                            "as an integer") from None
    v = asSsize(x)
    if v < 0:
        if v == -1 and PyErr_Occurred() != NULL:
            PyErr_Clear()
            raise ValueError("Maximum allowed dimension exceeded")
        raise ValueError("negative dimensions are not allowed")
    out[0] = v
    return 0


cdef int parseShapeSlow(object shape, npy_intp* dims) except -1:
    """Read an int or a sequence of ints into dims; return the number of
    dimensions. NumPy's errors and messages."""
    cdef Py_ssize_t n, i
    if isinstance(shape, bool):
        raise TypeError(f"expected a sequence of integers or a single integer, got '{shape!r}'")
    if PyLong_Check(shape):
        _dim(shape, dims)
        return 1
    if not PyTuple_Check(shape):
        try:
            shape = operator.index(shape)    # NumPy integers, 0-d arrays
        except TypeError:
            pass
        else:
            _dim(shape, dims)
            return 1
        try:
            shape = tuple(shape)
        except TypeError:
            raise TypeError("expected a sequence of integers or a single integer, "
                            f"got '{shape!r}'") from None
    n = PyTuple_GET_SIZE(shape)
    if n > MAXDIMS:
        raise ValueError(f"maximum supported dimension for an ndarray is currently "
                         f"{MAXDIMS}, found {n}")
    for i in range(n):
        _dim(<object>PyTuple_GET_ITEM(shape, i), &dims[i])
    return <int>n


cdef Py_ssize_t arrayNbytes(int nd, npy_intp* dims, Py_ssize_t itemsize) except -1:
    """Bytes of an array, refusing sizes that overflow as NumPy does."""
    # As NumPy: the product of the non-zero dimensions (and the itemsize)
    # must fit even when another dimension makes the array empty.
    cdef Py_ssize_t n = itemsize if itemsize else 1
    cdef int i
    cdef bint zero = itemsize == 0
    for i in range(nd):
        if dims[i] == 0:
            zero = True
        elif n > (<Py_ssize_t>0x7fffffffffffffff) // dims[i]:
            raise ValueError("array is too big; `arr.size * arr.dtype.itemsize` "
                             "is larger than the maximum possible size.")
        else:
            n *= dims[i]
    return 0 if zero else n


cdef str _C = "C"
cdef str _F = "F"


cdef int parseOrder(object order) except -1:
    """0 for C order, 1 for Fortran order."""
    if order is None or order is _C or order == "C" or order == "c":
        return 0
    if order is _F or order == "F" or order == "f":
        return 1
    raise ValueError(f"order must be one of 'C' or 'F' (got {order!r})")


cdef size_t descrAlignment(object descr) except 0:
    cdef size_t a = <size_t>PyDataType_ALIGNMENT(<PyArray_Descr*>descr)
    return a if a > ARRAY_ALIGN else ARRAY_ALIGN


cdef object expandSubarray(object descr, int* nd, npy_intp* dims):
    """A sub-array dtype ('(2,3)f8') becomes trailing dimensions of its
    base dtype, as numpy.zeros does; other dtypes are returned as they are."""
    if not PyDataType_HASSUBARRAY(<PyArray_Descr*>descr):
        return descr
    base, sub = descr.subdtype
    if nd[0] + len(sub) > MAXDIMS:
        raise ValueError(f"maximum supported dimension for an ndarray is currently "
                         f"{MAXDIMS}, found {nd[0] + len(sub)}")
    for n in sub:
        dims[nd[0]] = n
        nd[0] += 1
    return base


cdef Py_ssize_t descrItemsize(object descr) noexcept:
    return PyDataType_ELSIZE(<PyArray_Descr*>descr)


cdef PyObject* newArrayOver(object descr, int nd, npy_intp* dims, npy_intp* strides,
                            void* data, bint fortran) except? NULL:
    """A new writable ndarray over data (a new reference), or NULL with
    NumPy's error set. strides NULL: C or Fortran order as fortran says."""
    cdef int flags = NPY_ARRAY_WRITEABLE
    if fortran:
        flags |= NPY_ARRAY_F_CONTIGUOUS
    Py_INCREF(descr)        # PyArray_NewFromDescr steals it, even on failure
    return PyArray_NewFromDescr(&PyArray_Type, <PyArray_Descr*>descr, nd, dims, strides, data,
                                flags, NULL)


cdef object wrapArray(object descr, int nd, npy_intp* dims, void* data, bint fortran,
                      object owner, npy_intp* strides=NULL):
    """A writable ndarray over data, owned by owner (its .base; None for
    none). strides NULL: C or Fortran order as fortran says."""
    cdef PyObject* arr = newArrayOver(descr, nd, dims, strides, data, fortran)
    if arr == NULL:
        propagate()
    cdef object result = <object>arr
    Py_DECREF(result)       # drop the reference PyArray_NewFromDescr gave us
    if owner is not None:
        Py_INCREF(owner)        # PyArray_SetBaseObject steals it
        if PyArray_SetBaseObject(arr, <PyObject*>owner) < 0:
            Py_DECREF(owner)
            propagate()
    return result


cdef extern from *:
    """
    /* Make arr own its data with handler as its memory handler, as if
       NumPy had allocated it through that handler: array_dealloc then frees
       the data with handler->free. */
    static inline void pyarena_array_own(PyObject *arr, PyObject *handler) {
        Py_INCREF(handler);
        ((PyArrayObject_fields *)arr)->mem_handler = handler;
        ((PyArrayObject_fields *)arr)->flags |= NPY_ARRAY_OWNDATA;
    }
    static inline PyObject *pyarena_array_mem_handler(PyObject *arr) {
        return ((PyArrayObject_fields *)arr)->mem_handler;
    }
    """
    void arrayOwn "pyarena_array_own"(PyObject* arr, PyObject* handler)
    PyObject* arrayMemHandler "pyarena_array_mem_handler"(PyObject* arr)


cdef object arrayLayout(object shape, object dtype, arraySpec* spec):
    """Parse an array request (shape, dtype) into spec: dims, byte size,
    alignment, C or Fortran strides left to NumPy (stridesp NULL); return
    its descriptor. Every argument is converted here, once."""
    cdef Py_ssize_t itemsize
    cdef bint hassub
    descr = descrOf(dtype, &itemsize, &spec.align, &hassub)
    spec.nd = parseShape(shape, spec.dims)
    return finishLayout(descr, itemsize, hassub, NULL, spec)


cdef object countLayout(object dtype, Py_ssize_t n, arraySpec* spec):
    """arrayLayout for a 1-d array of n items (newarray), or a 0-d one for
    n < 0 (new)."""
    cdef Py_ssize_t itemsize
    cdef bint hassub
    descr = descrOf(dtype, &itemsize, &spec.align, &hassub)
    spec.nd = 0 if n < 0 else 1
    spec.dims[0] = n
    return finishLayout(descr, itemsize, hassub, NULL, spec)


cdef object finishLayout(object descr, Py_ssize_t itemsize, bint hassub, int* perm,
                         arraySpec* spec):
    """The rest of a layout, from dims and the descriptor: sub-array dtypes
    become trailing dimensions, the byte size is checked, and perm, when
    given, is the memory order of the first nd axes, outermost first
    (order='K' of the *_like functions): strides follow it, sub-array
    dimensions innermost."""
    cdef Py_ssize_t stride
    cdef int k, ax, nd0 = spec.nd
    cdef int order[MAXDIMS]
    if hassub:
        descr = expandSubarray(descr, &spec.nd, spec.dims)
        itemsize = descrItemsize(descr)
        spec.align = descrAlignment(descr)
    spec.nbytes = arrayNbytes(spec.nd, spec.dims, itemsize)
    spec.stridesp = NULL
    if perm != NULL:
        for k in range(nd0):
            order[k] = perm[k]
        for k in range(nd0, spec.nd):
            order[k] = k
        stride = itemsize
        for k in range(spec.nd - 1, -1, -1):
            ax = order[k]
            spec.strides[ax] = stride
            stride *= spec.dims[ax] if spec.dims[ax] else 1
        spec.stridesp = spec.strides
    return descr


cdef object likeLayout(object a, object dtype, object order, object shape, arraySpec* spec,
                       bint* fortran):
    """Parse a *_like request into spec and return its descriptor, NumPy's
    rules: order None or 'K' keeps a's memory order (C when the number of
    dimensions changes), 'A' is Fortran for a Fortran-contiguous a. a's
    layout is read from the array's C fields, so that an ndarray subclass's
    Python properties are never asked (they could run any code)."""
    cdef Py_ssize_t itemsize
    cdef bint hassub, same
    cdef int k, j, t, nd
    cdef char o
    cdef int perm[MAXDIMS]
    cdef npy_intp* astrides
    cdef int aflags
    if not isinstance(a, np.ndarray):
        a = np.asanyarray(a)
    o = parseLikeOrder(order)
    if dtype is None:
        descr = <object>PyArray_DESCR_(<PyObject*>a)
        descr = descrOf(descr, &itemsize, &spec.align, &hassub)
    else:
        descr = descrOf(dtype, &itemsize, &spec.align, &hassub)
    nd = PyArray_NDIM_(<PyObject*>a)
    if shape is None:
        spec.nd = nd
        for k in range(nd):
            spec.dims[k] = PyArray_DIMS_(<PyObject*>a)[k]
        same = True
    else:
        spec.nd = parseShape(shape, spec.dims)
        same = spec.nd == nd
    aflags = PyArray_FLAGS_(<PyObject*>a)
    fortran[0] = (aflags & NPY_ARRAY_F_CONTIGUOUS) != 0 and (aflags & NPY_ARRAY_C_CONTIGUOUS) == 0
    if o == b'C' or (o == b'K' and not same):
        fortran[0] = False
    elif o == b'F':
        fortran[0] = True
    elif o == b'K' and not (aflags & (NPY_ARRAY_F_CONTIGUOUS | NPY_ARRAY_C_CONTIGUOUS)):
        # Not contiguous: largest stride outermost, ties in axis order, as
        # NumPy does (an insertion sort: stable, and nd is small).
        astrides = PyArray_STRIDES_(<PyObject*>a)
        for k in range(nd):
            t = k
            j = k
            while j > 0 and absIntp(astrides[perm[j - 1]]) < absIntp(astrides[t]):
                perm[j] = perm[j - 1]
                j -= 1
            perm[j] = t
        fortran[0] = False
        return finishLayout(descr, itemsize, hassub, perm, spec)
    # 'A', or 'K' of a contiguous array: its own order.
    return finishLayout(descr, itemsize, hassub, NULL, spec)


cdef inline npy_intp absIntp(npy_intp x) noexcept:
    return -x if x < 0 else x


cdef char parseLikeOrder(object order) except 0:
    """The order argument of the *_like functions: 'C', 'F', 'A' or 'K' in
    either case; None is 'K' (NumPy's rule)."""
    if order is None:
        return b'K'
    if isinstance(order, str) and len(<str>order) == 1:
        u = (<str>order).upper()
        if u == "C" or u == "F" or u == "A" or u == "K":
            return ord(u)
    raise ValueError(f"order must be one of 'C', 'F', 'A', or 'K' (got {order!r})")


cdef int byteRange(object obj, uintptr_t* lo, uintptr_t* hi) except -1:
    """The bytes obj's buffer spans, [lo, hi] inclusive: 1, or 0 for an
    empty buffer. An ndarray (subclasses included) is read from its C
    fields, which also covers dtypes the buffer protocol refuses
    (datetime64); anything else through the buffer protocol, which may give
    no strides (ctypes arrays) or no shape: then the buffer is contiguous.
    TypeError for an object without a buffer. No Python code of obj's runs
    after it has handed over its buffer."""
    cdef Py_buffer view
    cdef Py_ssize_t i, extent, itemsize
    cdef npy_intp* dims
    cdef npy_intp* strides
    cdef uintptr_t a, b
    cdef int nd
    if isinstance(obj, np.ndarray):
        nd = PyArray_NDIM_(<PyObject*>obj)
        dims = PyArray_DIMS_(<PyObject*>obj)
        strides = PyArray_STRIDES_(<PyObject*>obj)
        itemsize = PyArray_ITEMSIZE_(<PyObject*>obj)
        a = b = <uintptr_t>PyArray_DATA_(<PyObject*>obj)
        if itemsize == 0:
            return 0
        for i in range(nd):
            if dims[i] == 0:
                return 0
            extent = (dims[i] - 1) * strides[i]
            if extent < 0:
                a += extent
            else:
                b += extent
        lo[0] = a
        hi[0] = b + itemsize - 1
        return 1
    if getBuffer(obj, &view, PyBUF_RECORDS_RO) < 0:
        if not PyErr_ExceptionMatches(BufferError):
            return -1
        PyErr_Clear()
        PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE)
    try:
        if view.len <= 0:
            return 0
        a = <uintptr_t>view.buf
        lo[0] = a
        hi[0] = a + view.len - 1
        if view.strides == NULL or view.shape == NULL or view.suboffsets != NULL:
            # Contiguous (no strides, or no shape: one run of len bytes).
            # An exporter that hands out sub-offsets it was not asked for
            # is judged by its first run only.
            return 1
        b = a
        for i in range(view.ndim):
            if view.shape[i] == 0:
                return 0
            extent = (view.shape[i] - 1) * view.strides[i]
            if extent < 0:
                a += extent
            else:
                b += extent
        lo[0] = a
        hi[0] = b + view.itemsize - 1
        return 1
    finally:
        PyBuffer_Release(&view)


cdef object emptyBase(object obj):
    """What a zero-length buffer rests on, one step: an ndarray's base, a
    memoryview's exporter; None for anything else. C fields only."""
    cdef PyObject* b
    if isinstance(obj, np.ndarray):
        b = PyArray_BASE_(<PyObject*>obj)
        return None if b == NULL else <object>b
    if isinstance(obj, memoryview):
        b = memoryviewExporter(<PyObject*>obj)
        return None if b == NULL else <object>b
    return None


cdef int checkDeviceLike(object device, object like) except -1:
    """NumPy 2's device= and like= keywords: the CPU is the only device,
    and like= (dispatch to another array library) cannot give pyarena
    memory."""
    if device is not None and device != "cpu":
        raise ValueError(f"Device not understood. Only \"cpu\" is allowed, but received: {device}")
    if like is not None:
        raise TypeError("pyarena makes numpy arrays from its memory; like= is not supported")
    return 0


cdef object arrayHandler(object arr):
    """The mem_handler capsule of an ndarray that owns its data, or None."""
    cdef PyObject* h = arrayMemHandler(<PyObject*>arr)
    return None if h == NULL else <object>h


cdef int propagate() except -1:
    """Return to the caller with the error the C API set."""
    return -1


cdef object wrapOwned(object descr, int nd, npy_intp* dims, npy_intp* strides, void* data,
                      bint fortran, object capsule, size_t nbytes):
    """A writable ndarray that owns data, nbytes of it, to be freed through
    capsule (the heap's NEP 49 handler). strides NULL: C or Fortran order.
    On failure the data is freed here and NumPy's error propagates. The
    array is tracked by tracemalloc in NumPy's domain, where NumPy's free
    untracks it."""
    cdef PyDataMem_Handler* handler
    cdef PyObject* arr = newArrayOver(descr, nd, dims, strides, data, fortran)
    if arr == NULL:
        handler = <PyDataMem_Handler*>PyCapsule_GetPointer(capsule, b"mem_handler")
        handler.allocator.free(handler.allocator.ctx, data, 0)
        propagate()
    arrayOwn(arr, <PyObject*>capsule)
    if nbytes:
        PyTraceMalloc_Track(NUMPY_TRACE_DOMAIN, <uintptr_t>data, nbytes)
    cdef object result = <object>arr
    Py_DECREF(result)       # drop the reference PyArray_NewFromDescr gave us
    return result


cdef object allocFailed(int nd, npy_intp* dims, object descr, Py_ssize_t nbytes):
    shape = tuple([dims[i] for i in range(nd)])
    units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    size = float(nbytes)
    k = 0
    while size >= 1024 and k < len(units) - 1:
        size /= 1024
        k += 1
    # NumPy's wording: three significant digits, whole bytes.
    text = f"{nbytes} bytes" if k == 0 else \
        f"{size:.{2 if size < 10 else 1 if size < 100 else 0}f} {units[k]}"
    return MemoryError(f"Unable to allocate {text} for an array with "
                       f"shape {shape} and data type {descr}")


def set_data_handler(object capsule):
    """Make capsule NumPy's data-memory handler in the current context
    (PyDataMem_SetHandler; None restores NumPy's default). Returns the
    handler that was current."""
    cdef PyObject* old = PyDataMem_SetHandler(NULL if capsule is None else <PyObject*>capsule)
    if old == NULL:
        propagate()
    result = <object>old
    Py_DECREF(result)       # PyDataMem_SetHandler returned a new reference
    return result


def get_data_handler():
    """NumPy's current data-memory handler capsule (PyDataMem_GetHandler)."""
    cdef PyObject* h = PyDataMem_GetHandler()
    if h == NULL:
        propagate()
    result = <object>h
    Py_DECREF(result)
    return result
