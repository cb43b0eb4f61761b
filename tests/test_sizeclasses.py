"""Tests for tools/mksizeclasses.py, the size-class table generator.

These exercise the generator and the header it writes, not the compiled
package: they need only the standard library and pytest.
"""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOL = REPO_ROOT / "tools" / "mksizeclasses.py"
HEADER = REPO_ROOT / "src" / "pyarena" / "sizeclasses.h"


# Go's published table (Go 1.22-1.24 runtime/sizeclasses.go), as data: a
# copy of shared/reference/go_sizeclasses.tsv kept beside the tests.
TSV = Path(__file__).resolve().parent / "data" / "go_sizeclasses.tsv"


COLUMNS = ["class", "bytes_per_obj", "bytes_per_span", "npages", "objects",
           "tail_waste", "max_waste_pct", "min_align", "divMagic_u32"]


def _tsv_rows() -> list[dict[str, str]]:
    with TSV.open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.fixture(scope="module")
def mk():
    spec = importlib.util.spec_from_file_location("mksizeclasses", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def classes(mk):
    return mk.compute_classes()


@pytest.fixture(scope="module")
def tables(mk, classes):
    return mk.size_to_class_tables(classes)


def _fmt(key: str, value) -> str:
    if key == "max_waste_pct":
        return f"{float(value):.2f}"
    return str(int(value))


# --- the classes themselves -------------------------------------------------

def test_shape(classes):
    assert len(classes) == 68
    for row in classes:
        assert list(row) == COLUMNS
    assert all(classes[0][key] == 0 for key in COLUMNS)
    assert [row["class"] for row in classes] == list(range(68))


def _compare(classes, expected_rows):
    assert len(expected_rows) == 67
    for got, want in zip(classes[1:], expected_rows, strict=True):
        for key in COLUMNS:
            assert _fmt(key, got[key]) == _fmt(key, want[key]), (
                f"class {want['class']} column {key}: "
                f"generated {got[key]!r}, Go's table {want[key]!r}")


def test_matches_reference_tsv(classes):
    rows = _tsv_rows()
    assert list(rows[0]) == COLUMNS
    _compare(classes, rows)


def test_class_invariants(mk, classes):
    prev = 0
    for row in classes[1:]:
        size, span = row["bytes_per_obj"], row["bytes_per_span"]
        assert size > prev
        assert span == row["npages"] * mk.PAGE_SIZE
        assert row["objects"] == span // size
        assert row["tail_waste"] == span - row["objects"] * size
        assert row["tail_waste"] <= span // 8
        assert 1 <= row["objects"] <= mk.MAX_OBJS_PER_SPAN
        assert size % 8 == 0
        if size > 1024:
            assert size % 128 == 0  # needed by size_to_class128
        align = row["min_align"]
        assert align & (align - 1) == 0 and size % align == 0
        assert align == mk.PAGE_SIZE or (size // align) % 2 == 1
        prev = size
    assert classes[-1]["bytes_per_obj"] == mk.MAX_SMALL_SIZE


# --- divide magic ----------------------------------------------------------

def test_divmagic_formula(classes):
    for row in classes[1:]:
        magic = row["divMagic_u32"]
        assert magic == (2**32 - 1) // row["bytes_per_obj"] + 1
        assert 0 < magic < 2**32


def test_divmagic_exact_at_slot_starts(classes):
    for row in classes[1:]:
        size, magic = row["bytes_per_obj"], row["divMagic_u32"]
        for i in range(row["objects"]):
            assert (i * size * magic) >> 32 == i, (size, i)


def test_divmagic_exact_for_every_offset(classes):
    # Stronger than slot starts: any byte inside a slot maps to its slot,
    # for every offset 0..span as the runtime may compute it.
    for row in classes[1:]:
        size, magic = row["bytes_per_obj"], row["divMagic_u32"]
        for n in range(row["bytes_per_span"] + 1):
            if ((n * magic) & 0xFFFFFFFFFFFFFFFF) >> 32 != n // size:
                pytest.fail(f"size {size}: magic {magic} wrong at offset {n}")


# --- lookup tables -----------------------------------------------------------

def test_table_lengths(tables):
    small, large = tables
    assert len(small) == 129
    assert len(large) == 249
    assert small[0] == 0


def _smallest_fitting(classes, size):
    return next(row["class"] for row in classes[1:]
                if row["bytes_per_obj"] >= size)


def test_lookup_every_size(mk, classes, tables):
    small, large = tables
    for size in range(1, mk.MAX_SMALL_SIZE + 1):
        want = _smallest_fitting(classes, size)
        if size <= 1024:
            got = small[(size + 7) // 8]
        else:
            got = large[(size - 1024 + 127) // 128]
        assert got == want, f"size {size}: class {got}, expected {want}"
        assert mk.size_to_class(size, tables) == want


def test_lookup_1017_to_1024_both_tables(classes, tables):
    # Go uses size_to_class128 from 1017 on (size > smallSizeMax-8); both
    # tables must agree there.
    small, large = tables
    for size in range(1017, 1025):
        want = _smallest_fitting(classes, size)
        assert want == 32
        assert small[(size + 7) // 8] == want
        assert large[(size - 1024 + 127) // 128] == want


# --- the header and --check ------------------------------------------------

def _run_tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *args],
                          capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=120)


def test_header_is_current(mk):
    assert HEADER.read_text(encoding="utf-8") == mk.render_header()


def test_check_passes_on_committed_header():
    result = _run_tool("--check")
    assert result.returncode == 0, result.stderr


def test_check_passes_on_explicit_copy(tmp_path):
    copy = tmp_path / "sizeclasses.h"
    copy.write_bytes(HEADER.read_bytes())
    result = _run_tool("--check", "--header", str(copy))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("edit", [
    lambda t: t.replace("#define PYARENA_PAGE_SHIFT 13",
                        "#define PYARENA_PAGE_SHIFT 12"),
    lambda t: t.replace("27264, 28672, 32768", "27264, 28672, 32767"),
    lambda t: t + "\n",
    lambda t: t.replace("DO NOT EDIT", "edit freely"),
], ids=["define", "array", "trailing-newline", "banner"])
def test_check_fails_on_modified_copy(tmp_path, edit):
    original = HEADER.read_text(encoding="utf-8")
    modified = edit(original)
    assert modified != original
    copy = tmp_path / "sizeclasses.h"
    copy.write_text(modified, encoding="utf-8")
    result = _run_tool("--check", "--header", str(copy))
    assert result.returncode == 1
    assert "out of date" in result.stderr
    assert copy.read_text(encoding="utf-8") == modified  # --check never writes


def test_check_fails_on_missing_header(tmp_path):
    result = _run_tool("--check", "--header", str(tmp_path / "absent.h"))
    assert result.returncode == 1
    assert result.stderr


def test_write_mode_creates_header(tmp_path):
    target = tmp_path / "out" / "sizeclasses.h"
    result = _run_tool("--header", str(target))
    assert result.returncode == 0, result.stderr
    assert target.read_text(encoding="utf-8") == HEADER.read_text(encoding="utf-8")


def test_header_layout(mk, classes, tables):
    text = mk.render_header()
    first = text.splitlines()[0]
    assert "tools/mksizeclasses.py" in first and "DO NOT EDIT" in first
    for heading in ("class", "bytes/obj", "bytes/span", "objects",
                    "tail waste", "max waste", "min align"):
        assert heading in text.split("#ifndef")[0]
    for line in [
        "#ifndef PYARENA_SIZECLASSES_H",
        "#define PYARENA_SIZECLASSES_H",
        "#include <stdint.h>",
        "#define PYARENA_PAGE_SHIFT 13",
        "#define PYARENA_PAGE_SIZE 8192",
        "#define PYARENA_MAX_SMALL_SIZE 32768",
        "#define PYARENA_SMALL_SIZE_DIV 8",
        "#define PYARENA_SMALL_SIZE_MAX 1024",
        "#define PYARENA_LARGE_SIZE_DIV 128",
        "#define PYARENA_NUM_SIZE_CLASSES 68",
        "#define PYARENA_MAX_OBJS_PER_SPAN 1024",
        "#endif",
    ]:
        assert line in text.splitlines(), line

    # Parse every array back and compare with the generator's values.
    small, large = tables
    expected = {
        ("uint32_t", "pyarena_class_to_size"): [r["bytes_per_obj"] for r in classes],
        ("uint8_t", "pyarena_class_to_allocnpages"): [r["npages"] for r in classes],
        ("uint16_t", "pyarena_class_to_nelems"): [r["objects"] for r in classes],
        ("uint16_t", "pyarena_class_to_minalign"): [r["min_align"] for r in classes],
        ("uint32_t", "pyarena_class_to_divmagic"): [r["divMagic_u32"] for r in classes],
        ("uint8_t", "pyarena_size_to_class8"): small,
        ("uint8_t", "pyarena_size_to_class128"): large,
    }
    for (ctype, name), values in expected.items():
        start = text.index(f"{name}[{len(values)}] = {{")
        decl = text[text.rindex("\n", 0, start) + 1:start]
        assert decl.split() == ["static", "const", ctype]
        body = text[text.index("{", start) + 1:text.index("};", start)]
        assert [int(v) for v in body.replace("\n", " ").split(",")] == values
    for line in text.splitlines():
        assert len(line) <= 80, line
