# Heap verification. See _mcheck.pyx.
from pyarena._types cimport mheap

cdef object checkHeap(mheap* h)
