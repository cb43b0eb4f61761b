"""Raw blocks: ``pyarena.alloc`` against ``bytearray``, both zeroed."""

import numpy as np

import pyarena

from .common import SIZE_LABELS, SIZES, TOUCH_STRIDE


class RawAlloc:
    """Allocate a zeroed buffer and drop it at once."""

    params = [["pyarena", "bytearray"], SIZE_LABELS]
    param_names = ["lib", "size"]

    def setup(self, lib, size):
        self.alloc = pyarena.alloc if lib == "pyarena" else bytearray
        self.n = SIZES[size]
        for _ in range(3):      # steady state: memory mapped and faulted in
            buf = self.alloc(self.n)
            if self.n:
                np.frombuffer(buf, np.uint8)[::TOUCH_STRIDE] = 1
            del buf

    def time_alloc(self, lib, size):
        self.alloc(self.n)
