"""asv benchmarks for pyarena.

Every benchmark imports the ``pyarena`` installed in the interpreter asv
runs (with ``asv run --python=same``, the current one), never the source
tree. Suites:

bench_zeros
    ``pyarena.zeros`` / ``pyarena.empty`` against ``numpy.zeros`` /
    ``numpy.empty``, allocate-and-drop and allocate-touch-drop, 8 B to 64 MiB.
bench_alloc
    Raw blocks: ``pyarena.alloc`` against ``bytearray``.
bench_churn
    A fixed stream of 10,000 mixed-size arrays with a bounded live set:
    time, peak memory, and the heap's statistics afterwards.
bench_clevel
    The C API's malloc+free pair and 100,000-allocation batches beside libc
    and PyMem (ns, measured in C), and NumPy arithmetic on temporaries under
    NumPy's allocator and pyarena's (time and peak memory).
bench_arena
    Arena values beside heap values and NumPy: zeros(8), new(struct), and
    dropping 100,000 values.
"""
