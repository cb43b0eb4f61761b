import ctypes
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, SupportsIndex, TypeAlias, TypeVar, final, overload

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray
from typing_extensions import Buffer, CapsuleType

from pyarena import reflect as reflect
from pyarena._mstats import MemStats as MemStats, SizeClassStats as SizeClassStats
from pyarena._pprof import (
    Frame as Frame, HeapProfile as HeapProfile, HeapSample as HeapSample,
    MEM_PROFILE_RATE as MEM_PROFILE_RATE,
)

__version__: str
PAGE_SIZE: int
MAX_SMALL_SIZE: int
NUM_SIZE_CLASSES: int
PHYS_PAGE_SIZE: int
PHYS_HUGE_PAGE_SIZE: int
PHYS_HUGE_PAGE_SHIFT: int
tracemalloc_domain: int

# As in NumPy's own stubs: a shape is an int or a sequence of ints; zeros,
# empty and full take order 'C' or 'F', the *_like functions also 'A', 'K'.
_ShapeLike: TypeAlias = SupportsIndex | Sequence[SupportsIndex]
_OrderCF: TypeAlias = Literal["C", "F", "c", "f"] | None
_OrderKACF: TypeAlias = Literal["K", "A", "C", "F", "k", "a", "c", "f"] | None
# The CPU is the only device; like= is always refused (TypeError), so only
# None type-checks.
_Device: TypeAlias = Literal["cpu"] | None
# A type for new/newarray: a dtype (anything numpy.dtype accepts) or a
# ctypes type (simple, Structure, Union, array or pointer type). The result
# is Any: a NumPy array for a dtype, an instance of the ctypes type (or of
# t * n) for a ctypes type.
_AllocType: TypeAlias = DTypeLike | type[ctypes._CData]
_CDataT = TypeVar("_CDataT", bound=ctypes._CData)
_ShapeT = TypeVar("_ShapeT", bound=tuple[int, ...])
_DTypeT = TypeVar("_DTypeT", bound=np.dtype[Any])

class SizeClass(NamedTuple):
    size_class: int
    bytes_per_obj: int
    bytes_per_span: int
    npages: int
    objects: int
    tail_waste: int
    max_waste_pct: float
    min_align: int
    div_magic: int

class Block:
    @property
    def heap(self) -> Heap | None: ...
    @property
    def address(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def size_class(self) -> int: ...
    @property
    def slot_size(self) -> int: ...
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...

class Allocator:
    """The allocation methods Heap and Arena share (see _face.pyx)."""
    def alloc(self, nbytes: int, *, zero: bool = ..., align: int | None = ...) -> Block: ...
    # NumPy's signatures (numpy.zeros and friends); device is 'cpu' or None,
    # like= is refused.
    def zeros(self, shape: _ShapeLike, dtype: DTypeLike = ..., order: _OrderCF = ..., *, device: _Device = ..., like: None = ...) -> NDArray[Any]: ...
    def empty(self, shape: _ShapeLike, dtype: DTypeLike = ..., order: _OrderCF = ..., *, device: _Device = ..., like: None = ...) -> NDArray[Any]: ...
    def full(self, shape: _ShapeLike, fill_value: Any, dtype: DTypeLike = ..., order: _OrderCF = ..., *, device: _Device = ..., like: None = ...) -> NDArray[Any]: ...
    def zeros_like(self, a: ArrayLike, dtype: DTypeLike = ..., order: _OrderKACF = ..., subok: bool = ..., shape: _ShapeLike | None = ..., *, device: _Device = ...) -> NDArray[Any]: ...
    def empty_like(self, a: ArrayLike, dtype: DTypeLike = ..., order: _OrderKACF = ..., subok: bool = ..., shape: _ShapeLike | None = ..., *, device: _Device = ...) -> NDArray[Any]: ...
    def full_like(self, a: ArrayLike, fill_value: Any, dtype: DTypeLike = ..., order: _OrderKACF = ..., subok: bool = ..., shape: _ShapeLike | None = ..., *, device: _Device = ...) -> NDArray[Any]: ...
    def new(self, t: _AllocType) -> Any: ...
    def newarray(self, t: _AllocType, n: SupportsIndex) -> Any: ...
    def owns(self, obj: int | Block | Buffer | np.ndarray[Any, Any]) -> bool: ...

class HeapProblem(NamedTuple):
    kind: str
    address: int
    size: int

class HeapCorruptionError(RuntimeError):
    problems: list[HeapProblem]
    def __init__(self, problems: Sequence[HeapProblem]) -> None: ...

@final
class Heap(Allocator):
    def __init__(self, *, profile_rate: int = ...) -> None: ...
    @property
    def profile_rate(self) -> int: ...
    @profile_rate.setter
    def profile_rate(self, rate: int) -> None: ...
    def heap_profile(self) -> HeapProfile: ...
    def numpy_handler(self) -> CapsuleType: ...
    def stats(self) -> MemStats: ...
    def check(self) -> int: ...
    def release(self) -> int: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def __enter__(self) -> Heap: ...
    def __exit__(self, *exc: object) -> Literal[False]: ...

@dataclass(frozen=True, slots=True)
class ArenaStats:
    bytes_allocated: int
    chunks: int
    bytes_mapped: int
    chunks_reused: int
    large_values: int
    live_values: int

class Arena(Allocator):
    def __init__(self, chunk_size: SupportsIndex = ..., heap: Heap | None = ...) -> None: ...
    def stats(self) -> ArenaStats: ...
    def free(self, *, strict: bool = ...) -> None: ...
    @property
    def freed(self) -> bool: ...
    # A copy on the default heap: an array (always a plain ndarray), a
    # Block, or an instance of the same ctypes type.
    @overload
    def clone(self, x: np.ndarray[_ShapeT, _DTypeT]) -> np.ndarray[_ShapeT, _DTypeT]: ...
    @overload
    def clone(self, x: Block) -> Block: ...
    @overload
    def clone(self, x: _CDataT) -> _CDataT: ...
    def __enter__(self) -> Arena: ...
    def __exit__(self, *exc: object) -> Literal[False]: ...

# The module-level face: the default heap's methods (mimalloc's mi_malloc
# is mi_heap_malloc on the default heap), typed as those methods.
def default_heap() -> Heap: ...
_default: Heap
alloc = _default.alloc
zeros = _default.zeros
empty = _default.empty
full = _default.full
zeros_like = _default.zeros_like
empty_like = _default.empty_like
full_like = _default.full_like
stats = _default.stats
release = _default.release

def numpy_allocator(heap: Heap | None = ...) -> AbstractContextManager[Heap, None]: ...
def install_numpy_allocator(heap: Heap | None = ..., *, scope: Literal["process", "context"] = ...) -> Heap: ...
def uninstall_numpy_allocator(*, scope: Literal["process", "context"] = ...) -> None: ...
def tune_malloc(mmap_threshold: int = ..., trim_threshold: int = ..., top_pad: int = ...) -> bool: ...
def get_include() -> str: ...
def size_class(nbytes: int) -> tuple[int, int]: ...
def size_classes() -> tuple[SizeClass, ...]: ...
