"""Command line: ``python -m pyarena [bench|profile|sizeclasses|stats]``.

``bench`` (the default, ``--quick`` when no subcommand is given) times
allocation side by side with the peers it replaces (``--peers``: NumPy
workloads under the allocators users preload instead); ``profile`` runs a
script with pyarena as NumPy's allocator and writes its heap profile (pprof,
folded stacks) and prints the top sites; ``sizeclasses`` prints
the size-class table in Go's columns; ``stats`` runs a short demo workload
and prints its MemStats.
"""

from __future__ import annotations

import argparse
import json
import sys

import pyarena
from pyarena import _bench

# The profile command's rate: 8 times Go's, since a profiling run is made
# to be looked at (at 64 KiB an allocation costs the countdown and 1 in
# ~16 of 4 KiB arrays a stack capture).
PROFILE_CLI_RATE = 64 * 1024


def cmd_sizeclasses(args: argparse.Namespace) -> int:
    rows = pyarena.size_classes()
    print(f"{'class':>5} {'bytes/obj':>9} {'bytes/span':>10} {'objects':>7} "
          f"{'tail waste':>10} {'max waste':>9} {'min align':>9}")
    for r in rows:
        print(f"{r.size_class:5d} {r.bytes_per_obj:9d} {r.bytes_per_span:10d} "
              f"{r.objects:7d} {r.tail_waste:10d} {r.max_waste_pct:8.2f}% "
              f"{r.min_align:9d}")
    print(f"\n{len(rows)} classes + class 0 (large objects, whole {pyarena.PAGE_SIZE}-byte "
          f"pages); small objects up to {pyarena.MAX_SMALL_SIZE} bytes")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    import random

    rng = random.Random(1)
    with pyarena.Heap() as heap:
        live = []
        for _ in range(20000):
            live.append(heap.alloc(rng.choice((8, 24, 64, 100, 512, 4000, 20000, 100000))))
            if len(live) > 500:
                del live[rng.randrange(len(live))]
        st = heap.stats()
        del live
        released = heap.release()
        after = heap.stats()
    fields = ("heap_alloc", "heap_sys", "heap_idle", "heap_inuse", "heap_released",
              "heap_objects", "mallocs", "frees", "total_alloc", "metadata_sys",
              "persistent_chunks", "sweeps")
    print("20,000 allocations of mixed sizes, 500 kept alive at a time:\n")
    print(f"{'':16}{'while live':>14}{'after release':>16}")
    for f in fields:
        print(f"{f:16}{getattr(st, f):14,d}{getattr(after, f):16,d}")
    print(f"\nreleased to the OS: {released:,d} bytes")
    busiest = sorted((c for c in enumerate(st.by_size) if c[1].mallocs),
                     key=lambda c: -c[1].mallocs)[:5]
    print("busiest classes:", ", ".join(f"{i} ({c.size} B): {c.mallocs}" for i, c in busiest))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    bench = _bench
    if args.peers:
        from pyarena import _bench_peers as bench
    results = bench.run(quick=args.quick, progress=not args.json and sys.stderr.isatty())
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    else:
        print(bench.format_table(results))
    return 0


def _run_target(target: str, module: bool) -> None:
    """Run target as __main__, the way ``python script.py`` or ``python -m
    module`` would. Its module stays alive in _run_target.last until the
    caller drops it: what the script holds at its end is in use."""
    import importlib.util
    import types

    if module:
        spec = importlib.util.find_spec(target)
        if spec is None or spec.loader is None:
            raise SystemExit(f"No module named {target}")
        if spec.submodule_search_locations is not None:      # a package: its __main__
            spec = importlib.util.find_spec(target + ".__main__")
        code = spec.loader.get_code(spec.name)
        filename = spec.origin
    else:
        with open(target, "rb") as f:
            source = f.read()
        filename = target
        code = compile(source, filename, "exec")
        spec = None
    main = types.ModuleType("__main__")
    main.__file__ = filename
    main.__spec__ = spec
    main.__builtins__ = __builtins__
    sys.argv[0] = filename
    saved = sys.modules["__main__"]
    sys.modules["__main__"] = main
    try:
        exec(code, main.__dict__)
    finally:
        sys.modules["__main__"] = saved
        _run_target.last = main        # kept alive for the snapshot


def _strip_frames(profile, outer: list):
    """profile with the command line's own frames (outer) taken off the
    outer end of every stack that has them all."""
    import dataclasses

    n = len(outer)
    samples = []
    for s in profile.samples:
        st = s.stack
        if len(st) > n and [(f.filename, f.function) for f in st[-n:]] == outer:
            s = dataclasses.replace(s, stack=st[:-n])
        samples.append(s)
    return dataclasses.replace(profile, samples=tuple(samples))


def cmd_profile(args: argparse.Namespace) -> int:
    """Run a script (or -m module) like python would, with the default heap
    profiling at args.rate and installed as NumPy's allocator in every
    thread; then write and summarise its heap profile. The profile is taken
    when the script ends: what it still holds then (its globals, whatever
    they reach) is in use."""
    import os
    import traceback

    heap = pyarena.default_heap()
    heap.profile_rate = args.rate
    target = args.script
    if not args.module:
        if not os.path.isfile(target):
            print(f"pyarena profile: no such script: {target}", file=sys.stderr)
            return 2
        sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
    else:
        sys.path.insert(0, os.getcwd())
    sys.argv = [target] + list(args.args)
    # The frames outside the script, innermost first: _run_target's, this
    # function's and its callers'. Stacks that end in them lose them.
    outer = [(_run_target.__code__.co_filename, _run_target.__code__.co_qualname)]
    f = sys._getframe()
    while f is not None:
        outer.append((f.f_code.co_filename, f.f_code.co_qualname))
        f = f.f_back
    del f
    code = 0
    pyarena.install_numpy_allocator(heap)
    try:
        _run_target(target, args.module)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        pyarena.uninstall_numpy_allocator()
    profile = _strip_frames(heap.heap_profile(), outer)
    _run_target.last = None
    profile.write_pprof(args.output)
    if args.folded:
        with open(args.folded, "w", encoding="utf-8") as f:
            f.write(profile.folded(by=args.by))
    err = sys.stderr
    print(f"\npyarena: heap profile of {target} (one sample per {args.rate} bytes on average) "
          f"written to {args.output}"
          + (f", folded stacks ({args.by}) to {args.folded}" if args.folded else ""), file=err)
    print("\nIn use when the script ended:", file=err)
    print(profile.top(args.top, by="inuse_space"), file=err)
    print("\nAllocated over the run:", file=err)
    print(profile.top(args.top, by="alloc_space"), file=err)
    print(f"\nView it with: go tool pprof -top {args.output}   (or -http=: for a browser)",
          file=err)
    return code


def _rate(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0 or v >= 1 << 63:
        raise argparse.ArgumentTypeError(f"must be from 0 to 2**63 - 1: {text!r}")
    return v


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyarena", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd")
    b = sub.add_parser("bench", help="time pyarena against its peers, side by side")
    b.add_argument("--quick", action="store_true", help="a few seconds' version")
    b.add_argument("--json", action="store_true", help="machine-readable output")
    b.add_argument("--peers", action="store_true",
                   help="NumPy workloads under pyarena's handler, jemalloc, mimalloc, tcmalloc "
                        "and tuned glibc, each in fresh processes (instead of the other tables)")
    b.set_defaults(func=cmd_bench)
    p = sub.add_parser("profile", help="run a script and write its heap profile",
                       description="Run a Python script with pyarena as NumPy's allocator "
                                   "(in every thread) on a heap that samples allocations; "
                                   "write the heap profile as pprof and print the top sites.")
    p.add_argument("-o", "--output", default="heap.pb.gz",
                   help="the pprof file (gzip-compressed profile.proto; default heap.pb.gz)")
    p.add_argument("--rate", type=_rate, default=PROFILE_CLI_RATE,
                   help=f"bytes per sample on average (default {PROFILE_CLI_RATE}; Go's "
                        f"always-on rate is {pyarena.MEM_PROFILE_RATE}; 1: every allocation)")
    p.add_argument("--folded", metavar="FILE",
                   help="also write folded stacks for flamegraph.pl, inferno or speedscope")
    p.add_argument("--by", default="inuse_space",
                   choices=["alloc_objects", "alloc_space", "inuse_objects", "inuse_space"],
                   help="the value the folded stacks carry (default inuse_space)")
    p.add_argument("--top", type=int, default=10, help="sites in each table (default 10)")
    p.add_argument("-m", dest="module", action="store_true",
                   help="the target is a module name, run as python -m runs it")
    p.add_argument("script", help="the script (or, with -m, the module) to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    p.set_defaults(func=cmd_profile)
    s = sub.add_parser("sizeclasses", help="print the size-class table")
    s.set_defaults(func=cmd_sizeclasses)
    t = sub.add_parser("stats", help="run a demo workload and print its MemStats")
    t.set_defaults(func=cmd_stats)
    args = parser.parse_args(argv)
    if args.cmd is None:
        args = parser.parse_args(["bench", "--quick"])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
