import ctypes
from typing import Any, SupportsIndex, TypeAlias

from numpy.typing import DTypeLike

# A dtype (anything numpy.dtype accepts) or a ctypes type, as for Heap.new.
_AllocType: TypeAlias = DTypeLike | type[ctypes._CData]

__all__ = ["unsafe_New", "unsafe_NewArray"]

def unsafe_New(t: _AllocType) -> Any: ...
def unsafe_NewArray(t: _AllocType, n: SupportsIndex) -> Any: ...
