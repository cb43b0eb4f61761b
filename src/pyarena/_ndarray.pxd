# The NumPy face's helpers: dtype and shape parsing, wrapping heap memory in
# an ndarray. See _ndarray.pyx.
from cpython.object cimport PyObject

cdef extern from "numpy/ndarraytypes.h":
    ctypedef Py_ssize_t npy_intp

cdef enum:
    MAXDIMS = 64          # NPY_MAXDIMS in NumPy 2
    ARRAY_ALIGN = 16      # every array's data is at least 16-aligned

cdef object descrOf(object dtype)
cdef int parseShape(object shape, npy_intp* dims) except -1
cdef Py_ssize_t arrayNbytes(int nd, npy_intp* dims, Py_ssize_t itemsize) except -1
cdef int parseOrder(object order) except -1
cdef object wrapArray(object descr, int nd, npy_intp* dims, void* data, bint fortran, object owner)
cdef size_t descrAlignment(object descr) except 0
cdef Py_ssize_t descrItemsize(object descr) noexcept
cdef object expandSubarray(object descr, int* nd, npy_intp* dims)
cdef object allocFailed(int nd, npy_intp* dims, object descr, Py_ssize_t nbytes)
