"""Heap statistics with Go's meanings (runtime.MemStats).

A snapshot, taken by ``Heap.stats()``; all sizes are in bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MemStats", "SizeClassStats"]


@dataclass(frozen=True, slots=True)
class SizeClassStats:
    """Allocation counts of one size class (Go: MemStats.BySize[i]).

    Attributes
    ----------
    size : int
        The class's slot size; 0 for class 0, which counts large objects.
    mallocs : int
        Objects allocated in this class, cumulative. Tiny values count in
        class 2, whose 16-byte blocks they share.
    frees : int
        Objects of this class freed, cumulative.
    """

    size: int
    mallocs: int
    frees: int


@dataclass(frozen=True, slots=True)
class MemStats:
    """A snapshot of a heap's statistics (Go: runtime.MemStats).

    Identities that hold in every snapshot: ``heap_sys == heap_inuse +
    heap_idle``, ``heap_released <= heap_idle``, ``heap_objects == mallocs
    - frees``, and the per-class counts in ``by_size`` add up to
    ``mallocs`` and ``frees``.

    Attributes
    ----------
    heap_alloc : int
        Bytes in live objects, counted by slot size (a large object by its
        pages, a live tiny block as 16 bytes).
    heap_sys : int
        Bytes of heap memory mapped from the OS.
    heap_idle : int
        Mapped bytes in free page runs, released ones included.
    heap_inuse : int
        Bytes in spans that hold objects.
    heap_released : int
        Idle bytes that read as zero and hold no physical memory: never
        touched, or given back to the OS.
    heap_objects : int
        Live objects.
    mallocs : int
        Objects allocated, cumulative (zero-size allocations not counted,
        as in Go).
    frees : int
        Objects freed, cumulative.
    total_alloc : int
        Bytes allocated, cumulative, counted as heap_alloc.
    metadata_sys : int
        Bytes mapped for the allocator's own records (persistentalloc).
    persistent_chunks : int
        256 KiB metadata chunks in use.
    sweeps : int
        Spans swept.
    invalid_frees : int
        Frees through the C API or NumPy's handler of pointers the heap
        did not hold live (double frees, foreign pointers); each was
        reported with a RuntimeWarning and ignored.
    corruptions : int
        Damage a debug heap found: redzones overwritten (overflows) and
        freed slots written (writes after free). Always 0 on a release
        heap, which does not look.
    cleared_ahead : int
        Bytes of freed large objects the zeroing worker cleared ahead of
        time, on an idle core (``Heap(prezero=True)``), cumulative.
    cleared_by_caller : int
        Bytes of zeroed large allocations the allocating thread had to
        look at and clear itself, cumulative.
    clear_skipped : int
        Bytes of zeroed large allocations not cleared because they were
        known zero: fresh or released pages, pages cleared ahead of time,
        pages the page tables show were never written. With
        ``cleared_by_caller`` it adds up to the page-rounded size of every
        zeroed large allocation.
    by_size : tuple of SizeClassStats
        One record per size class 0..67.
    gc_triggered : int
        Collections the pacer ran (``Heap(gogc=...)``).
    next_gc : int
        The ``heap_alloc`` at which the pacer requests its next collection
        (Go: NextGC); 0 without a pacer.
    limit_released : int
        Bytes allocating threads gave back to the OS to keep the heap under
        its ``memory_limit`` or ``max_bytes``, cumulative.
    scavenger_released : int
        Bytes the background scavenger gave back, cumulative.
    cap_refused : int
        Allocations refused by ``max_bytes``.
    metadata_huge_pages : bool
        Whether the heap's metadata is advised as huge pages (once
        ``heap_sys`` passes 1 GiB, where the kernel has them: Go's
        enableMetadataHugePages).
    """

    heap_alloc: int
    heap_sys: int
    heap_idle: int
    heap_inuse: int
    heap_released: int
    heap_objects: int
    mallocs: int
    frees: int
    total_alloc: int
    metadata_sys: int
    persistent_chunks: int
    sweeps: int
    invalid_frees: int
    corruptions: int
    cleared_ahead: int
    cleared_by_caller: int
    clear_skipped: int
    by_size: tuple[SizeClassStats, ...]
    gc_triggered: int = 0
    next_gc: int = 0
    limit_released: int = 0
    scavenger_released: int = 0
    cap_refused: int = 0
    metadata_huge_pages: bool = False

    def __repr__(self) -> str:
        # One line: the scalar fields, and only the size classes in use.
        fields = ", ".join(f"{f}={getattr(self, f)}" for f in _SCALARS)
        used = ", ".join(f"{i}: {c.mallocs - c.frees}/{c.mallocs}"
                         for i, c in enumerate(self.by_size) if c.mallocs)
        return f"MemStats({fields}, by_size={{{used}}} (class: live/mallocs))"

    def __str__(self) -> str:
        """A table a person reads: sizes in KiB and MiB, then the classes
        in use."""
        lines = []
        for f in _SCALARS:
            v = getattr(self, f)
            human = _human(v) if f in _BYTES and v >= 1024 else ""
            text = str(v) if isinstance(v, bool) else f"{v:,}"
            lines.append(f"{f:18} {text:>16} {human}".rstrip())
        used = [(i, c) for i, c in enumerate(self.by_size) if c.mallocs]
        if used:
            lines.append("")
            lines.append(f"{'class':>5} {'size':>7} {'mallocs':>12} {'frees':>12} {'live':>10}")
            for i, c in used:
                size = "large" if i == 0 else c.size
                lines.append(f"{i:5d} {size:>7} {c.mallocs:12,d} {c.frees:12,d} "
                             f"{c.mallocs - c.frees:10,d}")
        return "\n".join(lines)


_SCALARS = ("heap_alloc", "heap_sys", "heap_idle", "heap_inuse", "heap_released",
            "heap_objects", "mallocs", "frees", "total_alloc", "metadata_sys",
            "persistent_chunks", "sweeps", "invalid_frees", "corruptions", "cleared_ahead",
            "cleared_by_caller", "clear_skipped", "gc_triggered", "next_gc", "limit_released",
            "scavenger_released", "cap_refused", "metadata_huge_pages")
_BYTES = {"heap_alloc", "heap_sys", "heap_idle", "heap_inuse", "heap_released",
          "total_alloc", "metadata_sys", "cleared_ahead", "cleared_by_caller",
          "clear_skipped", "next_gc", "limit_released", "scavenger_released"}


def _human(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"({n / (1 << shift):.1f} {unit})"
    return ""
