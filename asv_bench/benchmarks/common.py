"""Parameters and workloads shared by the benchmark suites."""

import random

import numpy as np

import pyarena

#: The libraries compared; a benchmark's ``lib`` parameter.
LIBS = ["pyarena", "numpy"]

#: Allocation sizes in bytes, by the label asv shows.
SIZES = {
    "8 B": 8,
    "64 B": 64,
    "1 KiB": 1 << 10,
    "16 KiB": 16 << 10,
    "256 KiB": 256 << 10,
    "4 MiB": 4 << 20,
    "64 MiB": 64 << 20,
}
SIZE_LABELS = list(SIZES)

#: Touch loops write one byte per this many bytes (an OS page on x86-64).
TOUCH_STRIDE = 4096

#: The churn workload: CHURN_COUNT arrays of log-uniform random sizes from
#: 2**CHURN_MIN_LOG2 to 2**CHURN_MAX_LOG2 bytes (8 B to 256 KiB), each
#: stored in a random one of CHURN_LIVE slots, dropping the array that was
#: there. The stream comes from a fixed seed, so every run and every library
#: sees the same sizes in the same order.
CHURN_COUNT = 10_000
CHURN_LIVE = 256
CHURN_MIN_LOG2 = 3
CHURN_MAX_LOG2 = 18
CHURN_SEED = 1


def constructors(lib):
    """(zeros, empty) of the library named ``lib``."""
    if lib == "pyarena":
        return pyarena.zeros, pyarena.empty
    if lib == "numpy":
        return np.zeros, np.empty
    raise ValueError(f"unknown library {lib!r}")


def warm_up(*ctors, nbytes, rounds=3):
    """Allocate, write and drop ``nbytes`` with each constructor a few times.

    Run in ``setup`` so that a timed call finds the allocator in its steady
    state: heap memory mapped and already faulted in (with transparent huge
    pages the first write to a region makes the kernel clear a whole 2 MiB
    page, ~0.1-0.2 ms, which would swamp a one-sample ``--quick`` run).
    """
    for _ in range(rounds):
        for ctor in ctors:
            ctor(nbytes, np.uint8)[::TOUCH_STRIDE] = 1


def churn_plan():
    """The churn stream: a list of (nbytes, slot) pairs."""
    rng = random.Random(CHURN_SEED)
    return [(int(2.0 ** rng.uniform(CHURN_MIN_LOG2, CHURN_MAX_LOG2)),
             rng.randrange(CHURN_LIVE))
            for _ in range(CHURN_COUNT)]


def churn(zeros, plan):
    """Run the churn stream with the constructor ``zeros``.

    Each array is allocated, written once per TOUCH_STRIDE bytes (so that
    its pages are really in use, whichever library made it) and stored in
    its slot. Returns the live set at the end.
    """
    live = [None] * CHURN_LIVE
    u8 = np.uint8
    for nbytes, slot in plan:
        a = zeros(nbytes, u8)
        a[::TOUCH_STRIDE] = 1
        live[slot] = a
    return live
