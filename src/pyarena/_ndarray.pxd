# The NumPy face's helpers: dtype and shape parsing, wrapping heap memory in
# an ndarray. See _ndarray.pyx.
from cpython.object cimport PyObject
from cpython.exc cimport PyErr_Clear
from libc.stdint cimport uintptr_t

cdef extern from "numpy/ndarraytypes.h":
    ctypedef Py_ssize_t npy_intp
    ctypedef struct PyDataMemAllocator:
        void* ctx
        void* (*malloc)(void* ctx, size_t size) noexcept nogil
        void* (*calloc)(void* ctx, size_t nelem, size_t elsize) noexcept nogil
        void* (*realloc)(void* ctx, void* ptr, size_t new_size) noexcept nogil
        void (*free)(void* ctx, void* ptr, size_t size) noexcept nogil
    ctypedef struct PyDataMem_Handler:
        char name[127]
        unsigned char version
        PyDataMemAllocator allocator

cdef enum:
    MAXDIMS = 64          # NPY_MAXDIMS in NumPy 2
    ARRAY_ALIGN = 16      # every array's data is at least 16-aligned

ctypedef struct descrCache:
    # descrOf's memory of the last dtype argument (owned references), read
    # by the Heap's inline fast path through theDescrCache().
    PyObject* key
    PyObject* descr
    Py_ssize_t itemsize
    size_t align
    bint hassub

cdef descrCache* theDescrCache() noexcept


ctypedef struct arraySpec:
    int nd
    npy_intp dims[MAXDIMS]
    npy_intp strides[MAXDIMS]
    npy_intp* stridesp
    Py_ssize_t nbytes
    size_t align

cdef object arrayLayout(object shape, object dtype, arraySpec* spec)
cdef object countLayout(object dtype, Py_ssize_t n, arraySpec* spec)
cdef object likeLayout(object a, object dtype, object order, object shape, arraySpec* spec,
                       bint* fortran)
cdef int byteRange(object obj, uintptr_t* lo, uintptr_t* hi) except -1
cdef object emptyBase(object obj)
cdef object descrOf(object dtype, Py_ssize_t* itemsize, size_t* align, bint* hassub)
cdef int parseShapeSlow(object shape, npy_intp* dims) except -1

cdef extern from "Python.h":
    bint PyLong_CheckExact(object o) noexcept
    Py_ssize_t PyLong_AsSsize_t_unchecked "PyLong_AsSsize_t"(object o) noexcept


cdef inline int parseShape(object shape, npy_intp* dims) except -1:
    """Read an int or a sequence of ints into dims; return the number of
    dimensions. A plain non-negative int is read inline; anything else
    (tuples, errors) goes to parseShapeSlow."""
    cdef Py_ssize_t n
    if PyLong_CheckExact(shape):
        n = PyLong_AsSsize_t_unchecked(shape)
        if n >= 0:
            dims[0] = n
            return 1
        if n == -1:
            PyErr_Clear()       # overflow: the slow path words it as NumPy
    return parseShapeSlow(shape, dims)
cdef Py_ssize_t arrayNbytes(int nd, npy_intp* dims, Py_ssize_t itemsize) except -1
cdef int parseOrder(object order) except -1


cdef inline int parseOrderFast(object order) except -1:
    # The literal is interned, as is the default argument "C".
    if order is None or order is "C":
        return 0
    return parseOrder(order)
cdef object wrapArray(object descr, int nd, npy_intp* dims, void* data, bint fortran, object owner, npy_intp* strides=*)
cdef int checkDeviceLike(object device, object like) except -1
cdef object wrapOwned(object descr, int nd, npy_intp* dims, npy_intp* strides, void* data, bint fortran, object capsule, size_t nbytes)
cdef size_t descrAlignment(object descr) except 0
cdef Py_ssize_t descrItemsize(object descr) noexcept
cdef object expandSubarray(object descr, int* nd, npy_intp* dims)
cdef object arrayHandler(object arr)
cdef object allocFailed(int nd, npy_intp* dims, object descr, Py_ssize_t nbytes)
