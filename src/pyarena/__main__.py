"""Command line: ``python -m pyarena [bench|sizeclasses|stats]``.

``bench`` (the default, ``--quick`` when no subcommand is given) times
allocation side by side with the peers it replaces (``--peers``: NumPy
workloads under the allocators users preload instead); ``sizeclasses`` prints
the size-class table in Go's columns; ``stats`` runs a short demo workload
and prints its MemStats.
"""

from __future__ import annotations

import argparse
import json
import sys

import pyarena
from pyarena import _bench


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
