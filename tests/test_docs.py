"""Every example of the documentation runs, and prints what the text says.

The files: README.md and docs/*.md. What this test reads in them (write
new examples the same way):

Blocks.
- A block fenced ```python is run. Every other fence is not: a plain
  ``` (shell commands), ```cython, ```c, ```sh.
- A fence with a file name after the language, ```python file=setup.py or
  ```cython file=demo.pyx, is a file the reader is asked to write: it is
  written into the working directory under that name, and not run. When
  the files include a setup.py, it is built there
  (``python setup.py build_ext --inplace``, as the guide tells the reader)
  before any block runs.
- The ```python blocks of one file run in order, in one fresh interpreter
  per file, in one namespace: a block may use the names of the blocks
  before it. The working directory is a new temporary directory.

Printed output. Each top-level statement of a block runs on its own, and
what it writes to stdout is compared with what the text says it prints,
which is, in the order of the text, one line of output each:
- the comment at the end of the line where a ``print(...)`` call ends:
  ``print(len(b))   # 100``; and at the end of a top-level expression
  statement that prints, such as a call of a function that prints:
  ``show(b)   # 100`` (when it prints nothing, its comment is prose);
- the comment lines right below that line, at any indentation;
- the comment lines right below the statement, at the left margin::

      for x in (1, 2):
          print(x)
      # 1
      # 2

A statement that prints must say what, and a statement that says must
print it. Comments anywhere else are prose; so leave a blank line (or a
line of code) between a ``print`` and a prose comment.

Expected text.
- ``...`` in a line matches any run of characters (addresses, timings,
  ids): ``# <pyarena.Block 64 bytes at 0x..., class 6 (64 B slots)>``.
- A comment line that is only ``...`` matches any number of output lines.
- A line may carry a gloss after ``": "`` that is not output:
  ``# 2: the chunk and big`` expects ``2``. The whole text is tried first,
  then each prefix that ends before a ``": "``.
- Trailing spaces are ignored; stderr (warnings) is not compared. A
  statement that raises fails the page, and the rest of it is not run.

The other tests here keep docs/design.md true of the sources: its module
map (the drawing and the table of every cimport and import, pointing down
the drawing, without a cycle), its table of Go's malloc.go names (each
function or type it names is in the file it names), and every relative
link and #anchor of the docs.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import tokenize
import traceback
import types
from contextlib import redirect_stdout
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```(\S*)(.*)$")


# ---------------------------------------------------------------------------
# Reading the documents (used by the test and by the child that runs them).

def read_blocks(md: Path):
    """The blocks of md: a list of (info, first line number, source), where
    info is the fence's language and the rest of its info string."""
    blocks = []
    lines = md.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang, rest = m.group(1), m.group(2).strip()
        start = i + 1
        j = start
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        blocks.append(((lang, rest), start + 1, "\n".join(lines[start:j]) + "\n"))
        i = j + 1
    return blocks


def file_name(rest: str):
    m = re.fullmatch(r"file=(\S+)", rest)
    return m.group(1) if m else None


def runnable(md: Path):
    """(python blocks to run, {file name: text} of the file blocks)."""
    run, files = [], {}
    for (lang, rest), line, src in read_blocks(md):
        name = file_name(rest)
        if name is not None:
            files[name] = src
        elif lang == "python":
            assert not rest, f"{md.name}:{line}: unknown fence info {rest!r}"
            run.append((line, src))
    return run, files


def comments(src: str):
    """{line: (column, text)} of every comment in src (1-based lines)."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            # "# text": the text after one space, so that indented output
            # (a table) keeps its indentation.
            text = tok.string[1:]
            out[tok.start[0]] = (tok.start[1], (text[1:] if text[:1] == " " else text).rstrip())
    return out


def expected_output(node: ast.stmt, src_lines: list[str], notes: dict):
    """What the text says the top-level statement node prints (a list of
    lines, in the order of the text), and whether it has a print call."""
    def comment_only(line):
        return line <= len(src_lines) and src_lines[line - 1].lstrip().startswith("#")

    ends = sorted({c.end_lineno for c in ast.walk(node)
                   if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)
                   and c.func.id == "print"})
    said = set()
    for end in ends:
        col = notes.get(end, (0, ""))[0]
        if end in notes and col > 0 and src_lines[end - 1][:col].strip():
            said.add(end)                     # print(x)   # output
        line = end + 1
        while comment_only(line):             # print(x)\n    # output
            said.add(line)
            line += 1
    end = node.end_lineno
    if isinstance(node, ast.Expr) and end in notes and notes[end][0] > 0:
        said.add(end)                         # show(x)   # output (prose if it prints nothing)
    line = end + 1
    while line <= len(src_lines) and src_lines[line - 1].startswith("#"):
        said.add(line)                        # after the statement, at the margin
        line += 1
    return [notes[k][1] for k in sorted(said)], bool(ends)


def line_pattern(text: str):
    """Regexes one output line may match: the whole text, then the text
    without each gloss."""
    cands = [text] + [text[:m.start()] for m in re.finditer(": ", text)]
    return [re.compile(".*?".join(re.escape(p) for p in c.rstrip().split("...")) + r"\Z", re.S)
            for c in cands]


def matches(expected: list[str], actual: list[str]) -> bool:
    if not expected:
        return not actual
    head = expected[0]
    if head == "...":
        return any(matches(expected[1:], actual[k:]) for k in range(len(actual) + 1))
    if not actual:
        return False
    if not any(p.match(actual[0].rstrip()) for p in line_pattern(head)):
        return False
    return matches(expected[1:], actual[1:])


# ---------------------------------------------------------------------------
# The child: runs one document's blocks and writes what went wrong as JSON.

def _past_asan():
    """In an ASAN build (the second pass of .ci/run), the guide's deliberate
    overflows and writes after free (ctypes.memset past a debug heap's
    object) are stopped by AddressSanitizer at the write, as the guide says
    they are. So that the rest of each page is still checked there, its
    ctypes.memset and string_at go past the sanitizer (_testing.poke and
    peek); the plain pass runs every example as written."""
    import ctypes

    from pyarena import _testing

    if not _testing.sanitizers()["address"]:
        return
    string_at = ctypes.string_at

    def poke(addr, c, n):
        _testing.poke(addr, bytes([c & 0xFF]) * n)
        return addr

    def peek(addr, size=-1):
        return string_at(addr, size) if size < 0 else _testing.peek(addr, size)

    ctypes.memset, ctypes.string_at = poke, peek


def run_document(md: Path, report: Path):
    blocks, _ = runnable(md)
    _past_asan()
    problems = []
    # The examples' module is __main__ (so that pickle finds their classes).
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    ns = main.__dict__
    for first, src in blocks:
        src_lines = src.splitlines()
        notes = comments(src)
        tree = ast.parse(src)
        for node in tree.body:
            expected, has_print = expected_output(node, src_lines, notes)
            where = f"{md.name}:{first + node.lineno - 1}"
            code = ast.Module(body=[node], type_ignores=[])
            ast.increment_lineno(code, first - 1)
            buf = io.StringIO()
            try:
                with redirect_stdout(buf):
                    exec(compile(code, str(md), "exec"), ns)
            except BaseException:
                problems.append({"where": where, "error": traceback.format_exc()})
                report.write_text(json.dumps(problems))
                return
            actual = buf.getvalue().splitlines()
            if not has_print and not actual:
                continue
            if not matches(expected, actual):
                problems.append({"where": where, "expected": expected, "actual": actual})
    report.write_text(json.dumps(problems))


# ---------------------------------------------------------------------------
# The test.

def _env():
    from support import pyarena_env
    env = pyarena_env()
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def _format(md: Path, problems) -> str:
    out = [f"{md.relative_to(ROOT)}: {len(problems)} example(s) wrong"]
    for p in problems:
        if "error" in p:
            out.append(f"{p['where']}: raised\n{p['error']}")
        else:
            out.append(f"{p['where']}: expected {p['expected']!r}\n  printed {p['actual']!r}")
    return "\n".join(out)


@pytest.mark.parametrize("md", DOCS, ids=[p.name for p in DOCS])
def test_examples_print_what_the_text_says(md):
    blocks, files = runnable(md)
    assert blocks or md.name == "design.md", f"{md.name} has no python example"
    env = _env()
    with tempfile.TemporaryDirectory(prefix="pyarena-docs-") as tmp:
        cwd = Path(tmp)
        for name, text in files.items():
            (cwd / name).write_text(text)
        if "setup.py" in files:
            r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"],
                               cwd=cwd, env=env, capture_output=True, text=True)
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        report = cwd / "report.json"
        run_env = {**env, "PYTHONPATH": os.pathsep.join([str(cwd), env["PYTHONPATH"]])}
        from pyarena import _testing
        if _testing.sanitizers()["address"] and "ASAN_OPTIONS" in run_env:
            # The guide's worked example overruns a buffer in Cython on
            # purpose (demo.window_sums), for the debug heap to report; in
            # an ASAN build the sanitizer stops it first (see _past_asan).
            supp = cwd / "asan.supp"
            supp.write_text("interceptor_via_fun:*demo_*window_sums\n")
            run_env["ASAN_OPTIONS"] += f":suppressions={supp}"
        r = subprocess.run([sys.executable, __file__, str(md), str(report)], cwd=cwd,
                           env=run_env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{md.name}: the examples' interpreter died ({r.returncode})\n" \
            + r.stderr[-3000:]
        problems = json.loads(report.read_text())
    assert not problems, _format(md, problems)


def test_the_convention_catches_wrong_output():
    """The checker itself: wrong output, unverified output and a promised
    output that is not printed all fail; wildcards, glosses and '...' lines
    pass what they should."""
    def check(src):
        notes = comments(src)
        lines = src.splitlines()
        results = []
        ns = {}
        for node in ast.parse(src).body:
            buf = io.StringIO()
            with redirect_stdout(buf):
                exec(compile(ast.Module([node], []), "<t>", "exec"), ns)
            expected, has_print = expected_output(node, lines, notes)
            actual = buf.getvalue().splitlines()
            if has_print or actual:
                results.append(matches(expected, actual))
        return results

    assert check("print(1, 2)   # 1 2\n") == [True]
    assert check("print(1, 2)   # 1 3\n") == [False]
    assert check("print(1, 2)\n") == [False]                      # says nothing
    assert check("if False:\n    print(1)\n# 1\n") == [False]      # says, prints nothing
    assert check("print(hex(id(0)))   # 0x...\n") == [True]
    assert check("print(2)   # 2: the chunk and big\n") == [True]
    assert check("print('ValueError: x: 1')   # ValueError: x: 1\n") == [True]
    assert check("for i in range(3):\n    print(i)\n# 0\n# ...\n") == [True]
    assert check("for i in range(3):\n    print(i)\n# 0\n# 2\n") == [False]
    assert check("x = 1   # prose\n# more prose\nprint(x)\n# 1\n") == [True]
    assert check("if True:\n    print(1)\n    # 1\n    print(2)   # 2\n# 3\nprint(3)\n") == [False, False]
    assert check("if True:\n    print(1)\n    # 1\n    print(2)   # 2\n") == [True]
    assert check("print(1)\n# 1\n") == [True]                    # one line, said once
    assert check("def show(x):\n    print(x)\nshow(3)   # 3\nshow(4)   # 5\n") == [True, True, False]
    assert check("len('ab')   # prose: prints nothing\n") == []



# ---------------------------------------------------------------------------
# docs/design.md: the module map and the table of Go's names are true of
# the sources.

SRC = ROOT / "src" / "pyarena"


def _table(md_text: str, heading: str):
    """The rows (lists of cells) of the first table under heading."""
    part = md_text.split(heading, 1)[1]
    rows = []
    started = False
    for line in part.splitlines():
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not set("".join(cells)) <= set("- :"):
                rows.append(cells)
        elif started:
            break
    return rows[1:]                     # without the header


def _names(cell: str) -> set[str]:
    return set() if cell == "-" else set(re.findall(r"`([^`]+)`", cell))


def source_dependencies(mod: str):
    """(cimports, imports) of module mod, read from its .pyx, .pxd and .py:
    pyarena modules and pyarena's own C headers; "pyarena" for the
    package's public face."""
    own = {p.stem for p in SRC.iterdir() if p.suffix in (".pyx", ".pxd", ".py")}
    headers = {p.name for p in SRC.glob("*.h")}
    cims, ims = set(), set()
    for ext in (".pyx", ".pxd", ".py"):
        f = SRC / (mod + ext)
        if not f.exists():
            continue
        for line in f.read_text().splitlines():
            m = re.match(r"\s*from pyarena\.(\w+) (c?import)\b", line)
            if m:
                (cims if m.group(2) == "cimport" else ims).add(m.group(1))
                continue
            m = re.match(r"\s*from pyarena (c?import) (.*)", line)
            if m:
                if m.group(1) == "cimport":
                    cims.add("pyarena")
                else:
                    ims.update(n if n in own else "pyarena"
                               for n in re.findall(r"\w+", m.group(2)))
                continue
            if re.match(r"\s*cimport pyarena\b", line):
                cims.add("pyarena")
            if re.match(r"\s*import pyarena\b", line):
                ims.add("pyarena")
            cims.update(h for h in re.findall(r'cdef extern from "([\w.]+)"', line) if h in headers)
    cims.discard(mod)
    ims.discard(mod)
    return cims, ims


def test_design_module_map_matches_the_sources():
    text = (ROOT / "docs" / "design.md").read_text()
    rows = _table(text, "## Module map")
    table = {}
    for cells in rows:
        name = re.match(r"\[`([^`]+)`\]", cells[0]).group(1)
        table[name] = (_names(cells[3]), _names(cells[4]))
    modules = {p.stem for p in SRC.iterdir() if p.suffix in (".pyx", ".pxd", ".py")}
    modules |= {p.name for p in SRC.glob("*.h")}
    assert set(table) == modules, ("in the map but not the sources", set(table) - modules,
                                   "in the sources but not the map", modules - set(table))
    wrong = {}
    for mod, (cims, ims) in table.items():
        if mod.endswith(".h"):
            continue
        actual = source_dependencies(mod)
        if (cims, ims) != actual:
            wrong[mod] = {"map": (sorted(cims), sorted(ims)), "sources": tuple(map(sorted, actual))}
    assert not wrong, wrong
    # The drawing: every module on one line, every edge pointing down it
    # (the tools' line, at the top, is outside the layering).
    block = text.split("## Module map", 1)[1].split("```", 2)[1]
    line_of = {}
    lines = [ln for ln in block.splitlines() if ln.strip() and not set(ln.strip()) <= set("-=")]
    for i, ln in enumerate(lines):
        for tok in set(re.findall(r"[\w.]+", ln)) & set(table):
            assert tok not in line_of, f"{tok} is on two lines of the drawing"
            line_of[tok] = i
    assert set(line_of) == set(table), set(table) - set(line_of)
    upward = []
    for mod, (cims, ims) in table.items():
        for dep in cims | ims:
            dep = "__init__" if dep == "pyarena" else dep
            if line_of[mod] == 0 and line_of[dep] == 0:
                continue
            if not line_of[dep] > line_of[mod]:
                upward.append((mod, dep))
    assert not upward, upward
    # No cycle among the cimports ("pyarena" is the public __init__.pxd).
    graph = {("__init__" if m == "pyarena" else m): {("__init__" if d == "pyarena" else d)
                                                   for d in c} for m, (c, _) in table.items()}
    assert find_cycle(graph) is None, "cimport cycle: " + " -> ".join(find_cycle(graph))


def find_cycle(graph: dict):
    """A cycle of graph (node -> set of nodes) as a list of nodes, or None."""
    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return None
        if state.get(m) == "open":
            return path[path.index(m):] + [m]
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            found = visit(d, path + [m])
            if found:
                return found
        state[m] = "done"
        return None

    for m in sorted(graph):
        found = visit(m, [])
        if found:
            return found
    return None


def test_find_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


GO_NAMES = """physPageSize physHugePageSize physHugePageShift zerobase globalAlloc
persistentChunks persistentAlloc linearAlloc notInHeap mallocinit sysAlloc
sysReserveAligned enableMetadataHugePages nextFreeFast nextFree mallocgc
deductAssistCredit memclrNoHeapPointersChunked newobject reflect_unsafe_New
reflectlite_unsafe_New newarray reflect_unsafe_NewArray profilealloc nextSample
fastexprand nextSampleNoFP persistentalloc persistentalloc1 inPersistentAlloc init
alloc add computeRZlog""".split()


def test_design_names_every_go_name_where_it_lives():
    text = (ROOT / "docs" / "design.md").read_text()
    rows = _table(text, "## Go's malloc.go, name by name")
    names = [re.fullmatch(r"`(\w+)`", cells[0]).group(1) for cells in rows]
    assert names == GO_NAMES
    missing = []
    for cells in rows:
        where = cells[3]
        files = re.findall(r"\]\(\.\./(src/pyarena/[\w.]+)\)", where)
        if not files:
            assert re.fullmatch(r"issue \d+", where), (cells[0], where)
            continue
        sources = " ".join((ROOT / f).read_text() for f in files)
        for ident in _names(where):
            if re.fullmatch(r"[\w.]+\.(pyx|pxd|py|h)", ident):
                continue
            word = ident.split(".")[-1].rstrip("()")
            if not re.search(rf"\b{re.escape(word)}\b", sources):
                missing.append((cells[0], word, files))
    assert not missing, missing


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def test_links_resolve():
    """Every relative link of the docs names a file that exists, and every
    #anchor a heading of the page it points to."""
    anchors = {}
    for md in DOCS:
        in_code = False
        heads = set()
        for line in md.read_text().splitlines():
            if line.startswith("```"):
                in_code = not in_code
            elif not in_code and line.startswith("#"):
                heads.add(_slug(line.lstrip("#")))
        anchors[md.resolve()] = heads
    broken = []
    for md in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", md.read_text()):
            if re.match(r"\w+:", target):
                continue                    # https: and the like
            path, _, anchor = target.partition("#")
            dest = (md.parent / path).resolve() if path else md.resolve()
            if not dest.exists():
                broken.append((md.name, target))
            elif anchor and anchor not in anchors.get(dest, set()):
                broken.append((md.name, target))
    assert not broken, broken


if __name__ == "__main__":
    run_document(Path(sys.argv[1]), Path(sys.argv[2]))
