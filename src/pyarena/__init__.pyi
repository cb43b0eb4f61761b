from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal, NamedTuple, SupportsIndex, TypeAlias

from numpy.typing import ArrayLike, DTypeLike, NDArray
from typing_extensions import Buffer, CapsuleType

from pyarena._mstats import MemStats as MemStats, SizeClassStats as SizeClassStats

__version__: str
PAGE_SIZE: int
MAX_SMALL_SIZE: int
NUM_SIZE_CLASSES: int
PHYS_PAGE_SIZE: int
PHYS_HUGE_PAGE_SIZE: int
PHYS_HUGE_PAGE_SHIFT: int

# As in NumPy's own stubs: a shape is an int or a sequence of ints; zeros,
# empty and full take order 'C' or 'F', the *_like functions also 'A', 'K'.
_ShapeLike: TypeAlias = SupportsIndex | Sequence[SupportsIndex]
_OrderCF: TypeAlias = Literal["C", "F", "c", "f"] | None
_OrderKACF: TypeAlias = Literal["K", "A", "C", "F", "k", "a", "c", "f"] | None
# The CPU is the only device; like= is always refused (TypeError), so only
# None type-checks.
_Device: TypeAlias = Literal["cpu"] | None

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
    def heap(self) -> Heap: ...
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

class Heap:
    def __init__(self) -> None: ...
    def alloc(self, nbytes: int, *, zero: bool = ..., align: int | None = ...) -> Block: ...
    def zeros(
        self,
        shape: _ShapeLike,
        dtype: DTypeLike = ...,
        order: _OrderCF = ...,
        *,
        device: _Device = ...,
        like: None = ...,
    ) -> NDArray[Any]: ...
    def empty(
        self,
        shape: _ShapeLike,
        dtype: DTypeLike = ...,
        order: _OrderCF = ...,
        *,
        device: _Device = ...,
        like: None = ...,
    ) -> NDArray[Any]: ...
    def full(
        self,
        shape: _ShapeLike,
        fill_value: Any,
        dtype: DTypeLike = ...,
        order: _OrderCF = ...,
        *,
        device: _Device = ...,
        like: None = ...,
    ) -> NDArray[Any]: ...
    def zeros_like(
        self,
        a: ArrayLike,
        dtype: DTypeLike = ...,
        order: _OrderKACF = ...,
        subok: bool = ...,
        shape: _ShapeLike | None = ...,
        *,
        device: _Device = ...,
    ) -> NDArray[Any]: ...
    def empty_like(
        self,
        a: ArrayLike,
        dtype: DTypeLike = ...,
        order: _OrderKACF = ...,
        subok: bool = ...,
        shape: _ShapeLike | None = ...,
        *,
        device: _Device = ...,
    ) -> NDArray[Any]: ...
    def full_like(
        self,
        a: ArrayLike,
        fill_value: Any,
        dtype: DTypeLike = ...,
        order: _OrderKACF = ...,
        subok: bool = ...,
        shape: _ShapeLike | None = ...,
        *,
        device: _Device = ...,
    ) -> NDArray[Any]: ...
    def numpy_handler(self) -> CapsuleType: ...
    def owns(self, obj: int | Block | Buffer) -> bool: ...
    def stats(self) -> MemStats: ...
    def release(self) -> int: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def __enter__(self) -> Heap: ...
    def __exit__(self, *exc: object) -> Literal[False]: ...

def default_heap() -> Heap: ...
def alloc(nbytes: int, *, zero: bool = ..., align: int | None = ...) -> Block: ...
def zeros(
    shape: _ShapeLike,
    dtype: DTypeLike = ...,
    order: _OrderCF = ...,
    *,
    device: _Device = ...,
    like: None = ...,
) -> NDArray[Any]: ...
def empty(
    shape: _ShapeLike,
    dtype: DTypeLike = ...,
    order: _OrderCF = ...,
    *,
    device: _Device = ...,
    like: None = ...,
) -> NDArray[Any]: ...
def full(
    shape: _ShapeLike,
    fill_value: Any,
    dtype: DTypeLike = ...,
    order: _OrderCF = ...,
    *,
    device: _Device = ...,
    like: None = ...,
) -> NDArray[Any]: ...
def zeros_like(
    a: ArrayLike,
    dtype: DTypeLike = ...,
    order: _OrderKACF = ...,
    subok: bool = ...,
    shape: _ShapeLike | None = ...,
    *,
    device: _Device = ...,
) -> NDArray[Any]: ...
def empty_like(
    a: ArrayLike,
    dtype: DTypeLike = ...,
    order: _OrderKACF = ...,
    subok: bool = ...,
    shape: _ShapeLike | None = ...,
    *,
    device: _Device = ...,
) -> NDArray[Any]: ...
def full_like(
    a: ArrayLike,
    fill_value: Any,
    dtype: DTypeLike = ...,
    order: _OrderKACF = ...,
    subok: bool = ...,
    shape: _ShapeLike | None = ...,
    *,
    device: _Device = ...,
) -> NDArray[Any]: ...
def numpy_allocator(heap: Heap | None = ...) -> AbstractContextManager[Heap, None]: ...
def install_numpy_allocator(heap: Heap | None = ...) -> Heap: ...
def uninstall_numpy_allocator() -> None: ...
def get_include() -> str: ...
def stats() -> MemStats: ...
def release() -> int: ...
def size_class(nbytes: int) -> tuple[int, int]: ...
def size_classes() -> tuple[SizeClass, ...]: ...
