"""Array constructors: pyarena against NumPy, side by side.

Every class is parametrised by ``lib`` ("pyarena" or "numpy") and ``size``
(bytes of the array, a uint8 array of that length), so asv reports the two
libraries next to each other at each size. pyarena's functions allocate
from the default heap.
"""

import numpy as np

from .common import SIZE_LABELS, SIZES, LIBS, TOUCH_STRIDE, constructors, warm_up


class Alloc:
    """Allocate an array and drop it at once."""

    params = [LIBS, SIZE_LABELS]
    param_names = ["lib", "size"]

    def setup(self, lib, size):
        self.zeros, self.empty = constructors(lib)
        self.n = SIZES[size]
        warm_up(self.zeros, self.empty, nbytes=self.n)

    def time_zeros(self, lib, size):
        self.zeros(self.n, np.uint8)

    def time_empty(self, lib, size):
        self.empty(self.n, np.uint8)


class Touch:
    """Allocate an array, write one byte per 4 KiB page, drop it.

    This is the cost a program pays for memory it uses: ``numpy.zeros``
    of a large array is cheap because calloc's fresh pages are mapped
    lazily, but the page faults come when the array is written.
    """

    params = [LIBS, SIZE_LABELS]
    param_names = ["lib", "size"]

    def setup(self, lib, size):
        self.zeros, self.empty = constructors(lib)
        self.n = SIZES[size]
        warm_up(self.zeros, self.empty, nbytes=self.n)

    def time_zeros_touch(self, lib, size):
        a = self.zeros(self.n, np.uint8)
        a[::TOUCH_STRIDE] = 1

    def time_empty_touch(self, lib, size):
        a = self.empty(self.n, np.uint8)
        a[::TOUCH_STRIDE] = 1
