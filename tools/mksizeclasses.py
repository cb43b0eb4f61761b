#!/usr/bin/env python3
"""Build pyarena's small-object size-class table (src/pyarena/sizeclasses.h).

This is the Python counterpart of the Go runtime's ``mksizeclasses.go``.  The
allocator never creates a small object of an arbitrary size: a request of
1..32768 bytes is rounded up to one of 67 fixed sizes (class 0 stands for
"too big, give it its own span").  Each class also fixes how many 8 KiB pages a
span of that class takes, and therefore how many objects such a span holds.
The numbers are not written down by hand; they come from a small search that
this script performs, and the result is frozen into a C header that the
Cython modules include.  The header is checked in so that building pyarena
does not need to run Python code first; ``--check`` (used by the tests and by
CI) makes sure the checked-in file still matches what this script produces.

How the classes are chosen
--------------------------
Two kinds of waste are kept to about one eighth each:

* rounding waste -- a request is padded up to its class size.  Candidate sizes
  therefore advance in steps that grow with the size: 8 bytes up to 32, then
  16 bytes up to 256, then one eighth of the last power of two (32 up to 512,
  64 up to 1024, 128 up to 2048), and 256 bytes from 2048 on.
* tail waste -- a span is cut into equal slots and whatever is left at its end
  is lost.  For every candidate size the span grows one page at a time until
  the left-over part is at most 1/8 of the span.

A candidate that gets the same page count and the same number of objects as
the class before it replaces that class's size instead of opening a new class
(there is no point in keeping the smaller one).  Finally, every class size is
raised to span/objects, rounded down to a multiple of 128, when that is
bigger: the span holds the same number of objects either way, so the extra
bytes are free for the caller.  Keeping the 128-byte granularity is what lets
the coarse lookup table below work.

Derived values written alongside the sizes:

* divmagic: ``(2**32 - 1) // size + 1``.  For every byte offset ``n`` inside a
  span, ``(n * divmagic) >> 32 == n // size``, so the slot index of an address
  is a multiply and a shift, never a division.  The script proves this bound
  (Lemire, Kaser and Kurz, "Faster remainder by direct computation") before it
  writes anything.
* min align: the largest power of two dividing the size, at most one page.
  A slot at ``base + i*size`` in a page-aligned span is aligned to at least
  this much.
* size_to_class8 / size_to_class128: two small tables that turn a request size
  into its class.  Sizes up to 1024 use ``size_to_class8[(size + 7) // 8]``,
  larger ones ``size_to_class128[(size - 1024 + 127) // 128]``.  Each entry is
  the smallest class whose size is at least the biggest size that maps to the
  entry.  Go itself switches to the second table above 1016, not 1024; both
  tables give the 1024-byte class for 1017..1024, so either split works, but
  with the ``<= 1024`` split the second formula never sees a size below 1024
  and cannot underflow (in unsigned C arithmetic, or with Python's floor
  division of a negative number).

Usage
-----
``python tools/mksizeclasses.py``            write src/pyarena/sizeclasses.h
``python tools/mksizeclasses.py --check``    exit 1 if that file is stale
``python tools/mksizeclasses.py --stdout``   print the header instead
``--header PATH`` points either mode at another file.

Only the standard library is used, so the script runs before any build step.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

# ---------------------------------------------------------------------------
# Parameters shared with the C side (they are also written into the header).

PAGE_SHIFT = 13
PAGE_SIZE = 1 << PAGE_SHIFT          # 8 KiB: the allocator's page, not the OS's
MAX_SMALL_SIZE = 32 << 10            # largest size served from a size class
SMALL_SIZE_DIV = 8                   # granularity of size_to_class8
SMALL_SIZE_MAX = 1024                # last size covered by size_to_class8
LARGE_SIZE_DIV = 128                 # granularity of size_to_class128
MAX_OBJS_PER_SPAN = PAGE_SIZE // 8   # a one-page span of 8-byte objects
NUM_SIZE_CLASSES = 68                # 67 real classes plus the "large" class 0

UINT32_MAX = (1 << 32) - 1

COLUMNS = (
    "class",
    "bytes_per_obj",
    "bytes_per_span",
    "npages",
    "objects",
    "tail_waste",
    "max_waste_pct",
    "min_align",
    "divMagic_u32",
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HEADER = REPO_ROOT / "src" / "pyarena" / "sizeclasses.h"
GENERATOR_NAME = "tools/mksizeclasses.py"


def _is_pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


# ---------------------------------------------------------------------------
# The search.

def _choose_sizes() -> list[tuple[int, int]]:
    """Return [(size, npages)] for classes 0..67, class 0 being (0, 0)."""
    chosen: list[tuple[int, int]] = [(0, 0)]
    step = 8
    size = step
    while size <= MAX_SMALL_SIZE:
        # The step is revised only when the candidate reaches a power of two.
        if _is_pow2(size):
            if size >= 2048:
                step = 256
            elif size >= 128:
                step = size // 8
            elif size >= 32:
                step = 16
        if not _is_pow2(step):
            raise AssertionError(f"step {step} is not a power of two")

        # Add pages until what is left after the last whole slot is no more
        # than an eighth of the span.
        span = PAGE_SIZE
        while span % size > span // 8:
            span += PAGE_SIZE
        npages = span // PAGE_SIZE

        prev_size, prev_npages = chosen[-1]
        if (len(chosen) > 1 and npages == prev_npages
                and span // size == span // prev_size):
            # Same span, same object count: the bigger size subsumes the
            # previous class.
            chosen[-1] = (size, npages)
        else:
            chosen.append((size, npages))
        size += step

    # Give each class the largest 128-multiple that still packs the same
    # number of objects into its span.
    for i in range(1, len(chosen)):
        size, npages = chosen[i]
        span = npages * PAGE_SIZE
        grown = (span // (span // size)) & ~(LARGE_SIZE_DIV - 1)
        if grown > size:
            chosen[i] = (grown, npages)

    if len(chosen) != NUM_SIZE_CLASSES:
        raise AssertionError(
            f"got {len(chosen)} size classes, expected {NUM_SIZE_CLASSES}")
    return chosen


def _div_magic(size: int) -> int:
    """The uint32 reciprocal used to divide span offsets by ``size``."""
    if size == 0:
        return 0
    return UINT32_MAX // size + 1


def _verify_div_magic(size: int, npages: int) -> None:
    """Prove that the 32-bit magic is exact for offsets 0..span.

    Lemire et al. show that floor(n * ceil(2**F / d) / 2**F) == n // d for all
    N-bit n when F = N + L and L is the least integer with
    d <= (2**(N+L) mod d) + 2**L (F = log2 d for powers of two).  Any
    F' >= F works as well, so F <= 32 means the 32-bit magic is exact.
    """
    if size == 0:
        return
    limit = npages * PAGE_SIZE
    nbits = limit.bit_length()
    if _is_pow2(size):
        fbits = size.bit_length() - 1
    else:
        extra = 0
        while size > (1 << (nbits + extra)) % size + (1 << extra):
            extra += 1
        fbits = nbits + extra
    if fbits > 32:
        raise AssertionError(
            f"size {size}: {fbits} fractional bits needed, only 32 available")
    # Cheap spot checks at the ends of the range, using the runtime formula.
    magic = _div_magic(size)
    for n in (0, 1, size - 1, size, limit - 1, limit):
        if (n * magic) >> 32 != n // size:
            raise AssertionError(f"size {size}: magic {magic} fails at {n}")


def _min_align(size: int) -> int:
    """Largest power of two dividing ``size``, capped at one page."""
    if size == 0:
        return 0
    return min(size & -size, PAGE_SIZE)


def compute_classes() -> list[dict]:
    """All 68 classes as dicts keyed like reference/go_sizeclasses.tsv.

    Class 0 has every field 0.  ``max_waste_pct`` is the worst case, in
    percent of the span, when every slot holds an object one byte bigger than
    the previous class (rounding waste) plus the span's tail waste; it is
    rounded to two decimals, as in the published table.
    """
    rows: list[dict] = []
    prev_size = 0
    for cls, (size, npages) in enumerate(_choose_sizes()):
        if cls == 0:
            rows.append({key: 0 for key in COLUMNS})
            rows[0]["max_waste_pct"] = 0.0
            continue
        _verify_div_magic(size, npages)
        span = npages * PAGE_SIZE
        objects = span // size
        tail = span - objects * size
        worst = ((size - prev_size - 1) * objects + tail) / span
        rows.append({
            "class": cls,
            "bytes_per_obj": size,
            "bytes_per_span": span,
            "npages": npages,
            "objects": objects,
            "tail_waste": tail,
            "max_waste_pct": round(100 * worst, 2),
            "min_align": _min_align(size),
            "divMagic_u32": _div_magic(size),
        })
        prev_size = size

    for prev, cur in zip(rows[1:], rows[2:]):
        if cur["bytes_per_obj"] <= prev["bytes_per_obj"]:
            raise AssertionError("class sizes are not increasing")
    for row in rows[1:]:
        if row["objects"] > MAX_OBJS_PER_SPAN:
            raise AssertionError(f"class {row['class']}: too many objects")
        if row["npages"] > 255:
            raise AssertionError(f"class {row['class']}: npages overflows uint8")
    return rows


def _smallest_class_at_least(sizes: list[int], need: int) -> int:
    for cls, size in enumerate(sizes):
        if size >= need:
            return cls
    raise AssertionError(f"no class holds {need} bytes")


def size_to_class_tables(classes: list[dict] | None = None
                         ) -> tuple[list[int], list[int]]:
    """Return (size_to_class8, size_to_class128).

    Entry i of the first table serves sizes (i-1)*8+1 .. i*8, entry i of the
    second sizes 1024+(i-1)*128+1 .. 1024+i*128; each holds the smallest class
    that fits the largest size of its range.  Entry 0 of the first table is
    class 0 (size 0 is never looked up: it has its own zero-size path).
    """
    if classes is None:
        classes = compute_classes()
    sizes = [row["bytes_per_obj"] for row in classes]
    small = [_smallest_class_at_least(sizes, i * SMALL_SIZE_DIV)
             for i in range(SMALL_SIZE_MAX // SMALL_SIZE_DIV + 1)]
    large = [_smallest_class_at_least(sizes, SMALL_SIZE_MAX + i * LARGE_SIZE_DIV)
             for i in range((MAX_SMALL_SIZE - SMALL_SIZE_MAX) // LARGE_SIZE_DIV + 1)]
    return small, large


def align16_table(small: list[int], classes: list[dict]) -> list[int]:
    """size_to_class8 with every class that is less than 16-aligned replaced
    by the next class up (entry 0, size 0, stays class 0)."""
    out = []
    for c in small:
        while c and classes[c]["min_align"] < 16:
            c += 1
        out.append(c)
    return out


def size_to_class(size: int, tables: tuple[list[int], list[int]] | None = None
                  ) -> int:
    """The lookup the C side performs, for 0 <= size <= MAX_SMALL_SIZE."""
    if not 0 <= size <= MAX_SMALL_SIZE:
        raise ValueError(f"size {size} is not a small size")
    small, large = tables if tables is not None else size_to_class_tables()
    if size <= SMALL_SIZE_MAX:
        return small[(size + SMALL_SIZE_DIV - 1) // SMALL_SIZE_DIV]
    return large[(size - SMALL_SIZE_MAX + LARGE_SIZE_DIV - 1) // LARGE_SIZE_DIV]


# ---------------------------------------------------------------------------
# Rendering.

def _comment_table(classes: list[dict]) -> list[str]:
    lines = [
        f" * {'class':>5}  {'bytes/obj':>9}  {'bytes/span':>10}  "
        f"{'objects':>7}  {'tail waste':>10}  {'max waste':>9}  {'min align':>9}",
    ]
    for row in classes[1:]:
        lines.append(
            f" * {row['class']:5d}  {row['bytes_per_obj']:9d}  "
            f"{row['bytes_per_span']:10d}  {row['objects']:7d}  "
            f"{row['tail_waste']:10d}  {row['max_waste_pct']:8.2f}%  "
            f"{row['min_align']:9d}")
    return lines


def _alignment_summary(classes: list[dict]) -> list[str]:
    """For each alignment, the smallest object size from which every larger
    class is at least that aligned."""
    lines = [f" * {'alignment':>9}  {'bits':>4}  {'min obj size':>12}"]
    first_from: list[int] = [0] * (PAGE_SHIFT + 1)
    for row in classes[1:]:
        bits = row["min_align"].bit_length() - 1
        for b in range(PAGE_SHIFT + 1):
            if b > bits:
                first_from[b] = 0
            elif first_from[b] == 0:
                first_from[b] = row["bytes_per_obj"]
    for b, size in enumerate(first_from):
        if size == 0:
            break
        if b + 1 < len(first_from) and first_from[b + 1] == size:
            continue
        lines.append(f" * {1 << b:9d}  {b:4d}  {size:12d}")
    return lines


def _c_array(ctype: str, name: str, values: list[int], per_line: int = 16,
             width: int = 79) -> list[str]:
    """A C array definition, at most ``per_line`` values and (when the
    numbers allow) ``width`` columns per line."""
    out = [f"static const {ctype} {name}[{len(values)}] = {{"]
    row: list[str] = []
    for value in values:
        item = f"{value},"
        if row and (len(row) == per_line
                    or len("    " + " ".join(row + [item])) > width):
            out.append("    " + " ".join(row))
            row = []
        row.append(item)
    out.append("    " + " ".join(row).rstrip(","))
    out.append("};")
    return out


def render_header() -> str:
    """The complete text of src/pyarena/sizeclasses.h."""
    classes = compute_classes()
    small, large = size_to_class_tables(classes)

    lines = [
        f"/* Code generated by {GENERATOR_NAME}; DO NOT EDIT. */",
        "/* Regenerate with: python tools/mksizeclasses.py */",
        "",
        "/*",
        " * Small-object size classes of the pyarena allocator (Go's runtime",
        " * table). Class 0 means \"large\": such objects get a span of their own.",
        " * max waste: worst case, in percent of the span, when every object is",
        " * one byte bigger than the previous class, plus the span's tail waste.",
        " * min align: alignment every object of the class is guaranteed to have",
        " * (largest power of two dividing the size, at most one page).",
        " *",
    ]
    lines += _comment_table(classes)
    lines += [" *"]
    lines += _alignment_summary(classes)
    lines += [
        " *",
        " * Lookup, for 1 <= size <= PYARENA_MAX_SMALL_SIZE:",
        " *   size <= 1024: pyarena_size_to_class8[(size + 7) / 8]",
        " *   size >  1024: pyarena_size_to_class128[(size - 1024 + 127) / 128]",
        " * Slot index of a byte offset n within a span:",
        " *   (uint32_t)(((uint64_t)n * pyarena_class_to_divmagic[c]) >> 32)",
        " */",
        "",
        "#ifndef PYARENA_SIZECLASSES_H",
        "#define PYARENA_SIZECLASSES_H",
        "#include <stdint.h>",
        f"#define PYARENA_PAGE_SHIFT {PAGE_SHIFT}",
        f"#define PYARENA_PAGE_SIZE {PAGE_SIZE}",
        f"#define PYARENA_MAX_SMALL_SIZE {MAX_SMALL_SIZE}",
        f"#define PYARENA_SMALL_SIZE_DIV {SMALL_SIZE_DIV}",
        f"#define PYARENA_SMALL_SIZE_MAX {SMALL_SIZE_MAX}",
        f"#define PYARENA_LARGE_SIZE_DIV {LARGE_SIZE_DIV}",
        f"#define PYARENA_NUM_SIZE_CLASSES {len(classes)}",
        f"#define PYARENA_MAX_OBJS_PER_SPAN {MAX_OBJS_PER_SPAN}",
    ]
    col = lambda key: [row[key] for row in classes]  # noqa: E731
    lines += _c_array("uint32_t", "pyarena_class_to_size", col("bytes_per_obj"))
    lines += _c_array("uint8_t ", "pyarena_class_to_allocnpages", col("npages"))
    lines += _c_array("uint16_t", "pyarena_class_to_nelems", col("objects"))
    lines += _c_array("uint16_t", "pyarena_class_to_minalign", col("min_align"))
    lines += _c_array("uint32_t", "pyarena_class_to_divmagic", col("divMagic_u32"))
    lines += _c_array("uint8_t ", "pyarena_size_to_class8", small)
    lines += _c_array("uint8_t ", "pyarena_size_to_class128", large)
    lines += [" /* size_to_class8 for 16-aligned requests (the C-level API, arrays):",
              "    the 8- and 24-byte classes are only 8-aligned, so their sizes take",
              "    the next class up, which is 16-aligned. */"]
    lines += _c_array("uint8_t ", "pyarena_size_to_class8_align16", align16_table(small, classes))
    lines += ["#endif", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Command line.

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Generate pyarena's size-class header from Go's algorithm.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="do not write; exit 1 if the header is out of date")
    mode.add_argument("--stdout", action="store_true",
                      help="print the header instead of writing it")
    parser.add_argument("--header", type=Path, default=DEFAULT_HEADER,
                        help=f"header path (default: {DEFAULT_HEADER})")
    args = parser.parse_args(argv)

    text = render_header()
    if args.stdout:
        sys.stdout.write(text)
        return 0
    if args.check:
        try:
            current = args.header.read_text(encoding="utf-8")
        except OSError as exc:
            print(f"{args.header}: cannot read ({exc}); "
                  f"run python {GENERATOR_NAME}", file=sys.stderr)
            return 1
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(keepends=True), text.splitlines(keepends=True),
                fromfile=str(args.header), tofile="generated", n=1)
            sys.stderr.writelines(list(diff)[:40])
            print(f"{args.header} is out of date; "
                  f"run python {GENERATOR_NAME}", file=sys.stderr)
            return 1
        return 0
    args.header.parent.mkdir(parents=True, exist_ok=True)
    args.header.write_text(text, encoding="utf-8", newline="\n")
    print(f"wrote {args.header}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
