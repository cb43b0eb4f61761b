"""Heap profiles, the Python half: Go's samplers as references (malloc.go), the
bucket model (mprof.go), and pprof's heap format
(runtime/pprof/protomem.go, proto.go).

Go makes heap profiling cheap enough to stay on. Each mcache counts down the
bytes it allocates (``c.nextSample``); when the count goes below zero, the
allocation that crossed it is sampled (``profilealloc``): its stack goes into
a bucket keyed by (stack, size), the object is marked so its free is counted
in the same bucket, and a new countdown is drawn from an exponential
distribution whose mean is the profile rate (``nextSample`` by
``fastexprand``). Sampling that way is a Poisson process over the bytes
allocated, so an allocation of S bytes is sampled with probability
``1 - exp(-S/rate)``; the profile writer divides each bucket by that
probability (``scaleHeapSample``) to estimate the true totals.

This module is the Python half:

- reference versions of the samplers (``cheaprand``, ``fastlog2``,
  ``fastexprand``, ``next_sample``, ``next_sample_nofp``) that follow Go
  bit for bit, so the C implementation in the allocator can be tested
  against them; ``Sampler``, a model of one mcache's countdown, and
  ``BucketTable``, a model of mprof's buckets, for the same purpose;
- ``HeapProfile``, the snapshot a heap hands out: scaled samples, a pprof
  writer (gzip-compressed profile.proto, which ``go tool pprof`` reads), a
  text table and folded stacks for flame graphs.

The allocator side (pyarena_stack.h) captures stacks as (code object,
instruction offset) pairs; ``code_frame`` turns one into the (filename,
function, lineno, start_line) a bucket record carries.

Frees need none of Go's memRecord cycles here. Go publishes a profile as of
the last completed GC because its frees are only discovered by sweeping,
later than the allocations; Python frees an object when its last reference
dies, so a bucket's counts are current when the snapshot is taken.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import IO, NamedTuple, Union

__all__ = [
    "MEM_PROFILE_RATE", "STACK_MAX", "TRUNCATED_FRAME", "SAMPLE_TYPES",
    "Frame", "HeapSample", "HeapProfile", "Sampler", "BucketTable",
    "cheaprand", "cheaprandn", "fastlog2", "fastexprand", "next_sample",
    "next_sample_nofp", "scale_heap_sample", "code_frame",
]

# Go's runtime.MemProfileRate: one sample per 512 KiB allocated, on average.
MEM_PROFILE_RATE = 512 * 1024

# Go's maxStack: frames kept per sample, innermost first.
STACK_MAX = 32

# The sample types of a Go heap profile, in Go's order (protomem.go). pprof
# shows the last one unless told otherwise, so in-use space is the default
# view, as for a Go heap profile.
SAMPLE_TYPES = (
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
)
_BY = {name: i for i, (name, _) in enumerate(SAMPLE_TYPES)}
_ATTR = ("alloc_objects", "alloc_bytes", "inuse_objects", "inuse_bytes")

_MAX_INT64 = (1 << 63) - 1
_MASK64 = (1 << 64) - 1
_MASK32 = (1 << 32) - 1


class Frame(NamedTuple):
    """One frame of a sample's stack.

    A plain 3-tuple: ``Frame("a.py", "f", 3) == ("a.py", "f", 3)``.
    """

    filename: str
    function: str
    lineno: int


# A stack deeper than STACK_MAX keeps its innermost frames and ends with this
# one. Go drops the outer frames silently (golang/go#43669), which leaves
# such stacks unrooted in a flame graph; the marker gathers them under one
# root instead. The name is the line Go's tracebacks print in their place.
TRUNCATED_FRAME = Frame("", "...additional frames elided...", 0)


# ---------------------------------------------------------------------------
# Sampling, as Go's malloc.go and rand.go do it.


def cheaprand(state: int) -> tuple[int, int]:
    """One step of Go's per-M random source (rand.go cheaprand, 64-bit).

    wyrand: add a constant to the state, multiply it by itself xor another
    constant as a 128-bit product, fold the halves.

    Parameters
    ----------
    state : int
        The 64-bit state.

    Returns
    -------
    (int, int)
        The new state, and a uniform 32-bit value.
    """
    state = (state + 0xA0761D6478BD642F) & _MASK64
    product = state * (state ^ 0xE7037ED1A0B428DB)
    return state, ((product >> 64) ^ product) & _MASK32


def cheaprandn(u: int, n: int) -> int:
    """Go's cheaprandn: a uniform 32-bit ``u`` reduced to ``[0, n)`` by
    Lemire's multiply-shift instead of a modulo."""
    return ((u & _MASK32) * (n & _MASK32)) >> 32


# fastlog2Table: log2(1 + i/32) for i in 0..32, as Go's table has them
# (runtime/fastlog2table.go, printed from Go's math.Log2). Go's Log2 is not
# correctly rounded (entry 1 is 9 ulp off), so recomputing the table with
# libm would change a few intervals by one byte; these are Go's values, so
# that fastexprand here and in C match Go's bit for bit.
_FASTLOG_NUM_BITS = 5
_FASTLOG_SCALE_BITS = 20
_FASTLOG2_TABLE = (
    0.0, 0.0443941193584535, 0.08746284125033943, 0.12928301694496647,
    0.16992500144231248, 0.2094533656289499, 0.24792751344358555, 0.28540221886224837,
    0.3219280948873623, 0.3575520046180837, 0.39231742277876036, 0.4262647547020979,
    0.4594316186372973, 0.4918530963296748, 0.5235619560570128, 0.5545888516776374,
    0.5849625007211563, 0.6147098441152082, 0.6438561897747247, 0.6724253419714956,
    0.7004397181410922, 0.7279204545631992, 0.7548875021634686, 0.7813597135246596,
    0.8073549220576042, 0.8328900141647417, 0.8579809951275721, 0.8826430493618412,
    0.9068905956085185, 0.9307373375628862, 0.9541963103868752, 0.9772799234999164,
    1.0,
)


def fastlog2(x: float) -> float:
    """Go's fastlog2: log2 of a positive float from its exponent and a
    piecewise-linear table over the top 25 bits of its mantissa.

    The top 5 mantissa bits pick a table interval, the next 20 interpolate
    within it. At most ~1.8e-4 below the true log2 (a chord under a
    concave curve), never above it but for the table's rounding.
    """
    bits = _float64bits(x)
    exp = ((bits >> 52) & 0x7FF) - 1023
    index = (bits >> (52 - _FASTLOG_NUM_BITS)) % (1 << _FASTLOG_NUM_BITS)
    scale = (bits >> (52 - _FASTLOG_NUM_BITS - _FASTLOG_SCALE_BITS)) % (1 << _FASTLOG_SCALE_BITS)
    low, high = _FASTLOG2_TABLE[index], _FASTLOG2_TABLE[index + 1]
    return float(exp) + low + (high - low) * float(scale) * (1.0 / (1 << _FASTLOG_SCALE_BITS))


def _float64bits(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def fastexprand(mean: int, u: int) -> int:
    """Go's fastexprand: an exponentially distributed interval of mean
    ``mean`` from one uniform 32-bit value ``u`` (a cheaprand output).

    Inverse transform sampling: x = -ln(q) * mean for q uniform in (0, 1],
    computed as log2(q) * -ln(2) * mean. q takes 26 bits
    (``cheaprandn(u, 1<<26) + 1`` over 2**26) and the log is ``fastlog2``,
    exactly as Go does, so the C version can match this one bit for bit
    and never calls libm. The result is truncated and 1 is added, so it is
    never 0; ``mean`` is capped at 0x7000000 so that the largest step
    (about 18 * mean) fits an int32.
    """
    if mean > 0x7000000:
        mean = 0x7000000
    elif mean == 0:
        return 0
    random_bit_count = 26
    q = cheaprandn(u, 1 << random_bit_count) + 1
    qlog = fastlog2(float(q)) - random_bit_count
    if qlog > 0:
        qlog = 0.0
    minus_log2 = -0.6931471805599453  # -ln(2)
    return int(qlog * (minus_log2 * float(mean))) + 1


def next_sample(rate: int, u: int) -> int:
    """Go's nextSample: bytes until the next sample, for profile rate
    ``rate`` and one uniform 32-bit value ``u``.

    Rate 0 never samples (the largest int64); rate 1 samples every
    allocation (0: the countdown goes negative at once); otherwise an
    exponential interval of mean ``rate``.
    """
    if rate == 0:
        return _MAX_INT64
    if rate == 1:
        return 0
    return fastexprand(rate, u)


def next_sample_nofp(rate: int, u: int) -> int:
    """Go's nextSampleNoFP: the integer-only sampler, uniform on
    ``[0, 2*rate)`` (mean ``rate - 1/2``) from one uniform 32-bit ``u``.

    ``rate`` is capped at 0x3fffffff so that 2*rate fits 32 bits. Uniform
    intervals are not memoryless: sizes near the rate are sampled with a
    probability other than ``1 - exp(-S/rate)``, so the scaled estimates
    are exact only in the mean for sizes much smaller than the rate.
    """
    if rate > 0x3FFFFFFF:
        rate = 0x3FFFFFFF
    if rate != 0:
        return cheaprandn(u, 2 * rate)
    return 0


class Sampler:
    """A model of one mcache's sampling countdown (mallocgc, Go 1.23).

    ``alloc(size)`` does what mallocgc does after an allocation of ``size``
    slot bytes: ``nextSample -= size``; if that went below zero, or the
    profile rate changed since the last draw, the allocation is sampled
    and a new countdown is drawn. The first countdown is drawn at creation
    (Go: allocmcache).

    Parameters
    ----------
    rate : int
        Bytes per sample on average; 0 never samples, 1 samples all.
    seed : int
        The initial 64-bit state of the random source.
    uniform : bool
        Draw intervals with ``next_sample_nofp`` instead of ``next_sample``.
    """

    def __init__(self, rate: int = MEM_PROFILE_RATE, seed: int = 0, uniform: bool = False):
        _check_rate(rate)
        self.rate = rate
        self.state = seed & _MASK64
        self.uniform = uniform
        self.samples = 0
        self._draw()

    def _draw(self) -> None:
        self.mem_prof_rate = self.rate
        self.state, u = cheaprand(self.state)
        if self.uniform and self.rate > 1:
            self.next_sample = next_sample_nofp(self.rate, u)
        else:
            self.next_sample = next_sample(self.rate, u)

    def alloc(self, size: int) -> bool:
        """Count an allocation of ``size`` (> 0) bytes; whether it is
        sampled.

        Go also records the sample when the rate has just changed to 0;
        this model does not (it only draws the new, endless countdown).
        """
        self.next_sample -= size
        if self.next_sample < 0 or self.rate != self.mem_prof_rate:
            sampled = self.rate != 0
            self._draw()
            self.samples += sampled
            return sampled
        return False


class BucketTable:
    """A model of mprof's memory buckets: counts per (stack, size).

    Go keys a bucket by the stack and the slot size (stkbucket), so one
    line allocating several sizes has several buckets, each scaled with
    its own size; a snapshot lists them all, as ``records()`` does.
    """

    def __init__(self) -> None:
        self._b: dict[tuple, list[int]] = {}

    def malloc(self, stack: Sequence, size: int) -> tuple:
        """Record a sampled allocation (Go: mProf_Malloc); returns the
        bucket key, which a sampled object keeps for its free."""
        if size <= 0:
            raise ValueError(f"size must be positive, not {size}")
        key = (tuple(tuple(f) for f in stack), size)
        r = self._b.setdefault(key, [0, 0, 0, 0])
        r[0] += 1
        r[1] += size
        return key

    def free(self, key: tuple) -> None:
        """Record the free of a sampled object (Go: mProf_Free)."""
        r = self._b.get(key)
        if r is None or r[2] >= r[0]:
            raise ValueError("free of an object this table did not record as live")
        r[2] += 1
        r[3] += key[1]

    def records(self) -> list[tuple]:
        """(stack, alloc_count, alloc_bytes, free_count, free_bytes) per
        bucket, unscaled: the input of ``HeapProfile.from_buckets``."""
        return [(key[0], r[0], r[1], r[2], r[3]) for key, r in self._b.items()]


def scale_heap_sample(count: int, size: int, rate: int) -> tuple[int, int]:
    """Go's scaleHeapSample: unbiased (count, bytes) for a bucket that
    recorded ``count`` samples totalling ``size`` bytes at ``rate``.

    Each sample stands for ``1 / (1 - exp(-avg/rate))`` allocations, the
    inverse of the probability that an allocation of the average size is
    sampled. Rate 1 means every allocation was recorded: no scaling. Rate 0
    (unknown) is not scaled either.
    """
    if count == 0 or size == 0:
        return 0, 0
    if rate <= 1:
        return count, size
    avg = float(size) / float(count)
    scale = 1.0 / (1.0 - math.exp(-avg / float(rate)))
    return int(float(count) * scale), int(float(size) * scale)


def code_frame(code, lasti: int) -> tuple[str, str, int, int]:
    """(filename, function, lineno, start_line) of a code object at an
    instruction byte offset, as PyCode_Addr2Line resolves it.

    ``function`` is the qualified name (``Class.method``); ``lineno`` is 0
    where the offset has no line.
    """
    line = 0
    for start, end, lineno in code.co_lines():
        if start <= lasti < end:
            line = lineno or 0
            break
    return code.co_filename, code.co_qualname, line, code.co_firstlineno


def _check_rate(rate) -> None:
    if not isinstance(rate, int) or isinstance(rate, bool):
        raise TypeError(f"profile rate must be an int, not {type(rate).__name__}")
    if rate < 0:
        raise ValueError(f"profile rate must be >= 0, not {rate}")


# ---------------------------------------------------------------------------
# The snapshot.


@dataclass(frozen=True, slots=True)
class HeapSample:
    """One bucket of a heap profile, scaled to estimates of the true totals.

    Attributes
    ----------
    stack : tuple of Frame
        (filename, function, lineno) frames, innermost first. A truncated
        stack ends with ``TRUNCATED_FRAME``.
    alloc_objects, alloc_bytes : int
        Estimated objects and bytes allocated here since profiling began.
    inuse_objects, inuse_bytes : int
        Estimated objects and bytes allocated here and not yet freed.
    block_size : int
        Bytes per object in this bucket (slot size): the "bytes" label of a
        Go heap profile sample.
    """

    stack: tuple
    alloc_objects: int
    alloc_bytes: int
    inuse_objects: int
    inuse_bytes: int
    block_size: int

    @property
    def truncated(self) -> bool:
        """Whether the stack was deeper than STACK_MAX frames."""
        return bool(self.stack) and self.stack[-1] == TRUNCATED_FRAME


@dataclass(frozen=True, slots=True, repr=False)
class HeapProfile:
    """A heap profile: where the sampled memory was allocated, and how much
    of it is still in use.

    Made by ``Heap.heap_profile()``, or from raw bucket counts with
    ``HeapProfile.from_buckets``. The figures are estimates: a sampled
    allocation stands for all the allocations the sampler skipped around it
    (see ``scale_heap_sample``); at rate 1 they are exact.

    Attributes
    ----------
    samples : tuple of HeapSample
        One per (stack, size) bucket that ever allocated.
    rate : int
        The profile rate: bytes per sample on average (1: every allocation).
    time_nanos : int
        When the snapshot was taken, in nanoseconds since the epoch.
    start_lines : mapping
        Frame to the first line of its function, where known (pprof's
        Function.start_line).
    """

    samples: tuple
    rate: int
    time_nanos: int = 0
    start_lines: Mapping = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_buckets(cls, buckets: Iterable, rate: int, *, time_nanos: int | None = None) -> "HeapProfile":
        """Build a profile from unscaled bucket counts.

        Parameters
        ----------
        buckets : iterable of tuple
            ``(stack, alloc_count, alloc_bytes, free_count, free_bytes)``
            per bucket, counts as sampled. ``stack`` is a sequence of frames
            innermost first, each ``(filename, function, lineno)`` or
            ``(filename, function, lineno, start_line)``; a truncated stack
            ends with ``TRUNCATED_FRAME``. A bucket holds objects of one
            size (Go keys buckets by stack and size); buckets with equal
            stacks and sizes are merged, and buckets that never allocated
            are left out.
        rate : int
            The profile rate the counts were sampled at.
        time_nanos : int, optional
            The snapshot's time; now if omitted.

        Returns
        -------
        HeapProfile

        Raises
        ------
        ValueError
            For negative counts, or more freed than allocated.
        TypeError
            For a malformed bucket or frame.
        """
        _check_rate(rate)
        merged: dict[tuple, list[int]] = {}
        start_lines = {}
        for b in buckets:
            try:
                stack, na, ba, nf, bf = b
            except (TypeError, ValueError):
                raise TypeError("a bucket is (stack, alloc_count, alloc_bytes, "
                                "free_count, free_bytes)") from None
            for v in (na, ba, nf, bf):
                if not isinstance(v, int) or isinstance(v, bool):
                    raise TypeError(f"bucket counts must be ints, not {type(v).__name__}")
            if min(na, ba, nf, bf) < 0:
                raise ValueError(f"negative bucket count in {(na, ba, nf, bf)}")
            if nf > na or bf > ba:
                raise ValueError(f"bucket frees more than it allocated: {(na, ba, nf, bf)}")
            if na == 0:
                continue
            frames = []
            for f in stack:
                fr, start = _frame(f)
                frames.append(fr)
                if start:
                    start_lines[fr] = start
            # Buckets whose stacks differ only in what a frame list does not
            # show (two instructions of one line) are one sample, as Go's
            # buckets of equal PCs are one: the counts add before scaling.
            key = (tuple(frames), ba // na)
            r = merged.get(key)
            if r is None:
                merged[key] = [na, ba, nf, bf]
            else:
                r[0] += na
                r[1] += ba
                r[2] += nf
                r[3] += bf
        samples = []
        for (frames, size), (na, ba, nf, bf) in merged.items():
            alloc = scale_heap_sample(na, ba, rate)
            inuse = scale_heap_sample(na - nf, ba - bf, rate)
            samples.append(HeapSample(frames, alloc[0], alloc[1], inuse[0], inuse[1], size))
        return cls(tuple(samples), rate, time.time_ns() if time_nanos is None else time_nanos,
                   MappingProxyType(start_lines))

    def __repr__(self) -> str:
        return (f"HeapProfile(rate={self.rate}, samples={len(self.samples)}, "
                f"inuse_bytes={sum(s.inuse_bytes for s in self.samples)}, "
                f"alloc_bytes={sum(s.alloc_bytes for s in self.samples)})")

    # -- pprof ---------------------------------------------------------------

    def to_proto(self) -> bytes:
        """The profile as an uncompressed profile.proto message."""
        return _encode_profile(self)

    def write_pprof(self, path_or_file: Union[str, os.PathLike, IO[bytes]]) -> None:
        """Write the profile in pprof's format: a gzip-compressed
        profile.proto, as Go's runtime/pprof writes a heap profile.

        Read it with ``go tool pprof`` (``-top``, ``-traces``, ``-http=:``,
        ``-sample_index=alloc_space``) or any tool that reads pprof.

        Parameters
        ----------
        path_or_file : str, path-like, or binary file
            Where to write; a file object must accept bytes.
        """
        data = gzip.compress(self.to_proto(), compresslevel=1, mtime=0)
        if isinstance(path_or_file, (str, os.PathLike)):
            with open(path_or_file, "wb") as f:
                f.write(data)
        elif hasattr(path_or_file, "write"):
            path_or_file.write(data)
        else:
            raise TypeError("write_pprof needs a path or a binary file, not "
                            f"{type(path_or_file).__name__}")

    # -- text ----------------------------------------------------------------

    def top(self, n: int = 10, by: str = "inuse_space") -> str:
        """The ``n`` allocation sites with the most ``by``, as a table.

        A site is the innermost frame of a sample (the line that asked for
        the memory). ``flat`` is what the site allocated itself; ``cum``
        what was allocated while it was on the stack, its callees included.

        Parameters
        ----------
        n : int
            Rows to show.
        by : {"inuse_space", "inuse_objects", "alloc_space", "alloc_objects"}
            The sample type to rank by.

        Returns
        -------
        str
        """
        i = _by_index(by)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be an int >= 0, not {n!r}")
        attr = _ATTR[i]
        fmt = _fmt_bytes if SAMPLE_TYPES[i][1] == "bytes" else str
        flat: dict = {}
        cum: dict = {}
        total = 0
        for s in self.samples:
            v = getattr(s, attr)
            if v == 0:
                continue
            total += v
            site = s.stack[0] if s.stack else _NO_STACK
            flat[site] = flat.get(site, 0) + v
            for fr in set(s.stack) or (_NO_STACK,):
                cum[fr] = cum.get(fr, 0) + v
        rows = sorted(flat, key=lambda fr: (-flat[fr], -cum[fr], fr))
        shown = rows[:n]
        shown_total = sum(flat[fr] for fr in shown)
        lines = [f"Heap profile: {by}, {_rate_text(self.rate)}"]
        if total == 0:
            lines.append(f"no {by} in this profile")
            return "\n".join(lines)
        lines.append(f"Showing top {len(shown)} of {len(rows)} sites, {fmt(shown_total)} "
                     f"({_pct(shown_total, total)}) of {fmt(total)} total")
        cells = [(fmt(flat[fr]), _pct(flat[fr], total), fmt(cum[fr]), _pct(cum[fr], total),
                  _site_text(fr)) for fr in shown]
        wv = max(len("flat"), *(max(len(c[0]), len(c[2])) for c in cells))
        lines.append(f"{'flat':>{wv}} {'flat%':>7} {'sum%':>7} {'cum':>{wv}} {'cum%':>7}  site")
        running = 0
        for fr, c in zip(shown, cells):
            running += flat[fr]
            lines.append(f"{c[0]:>{wv}} {c[1]:>7} {_pct(running, total):>7} {c[2]:>{wv}} "
                         f"{c[3]:>7}  {c[4]}")
        return "\n".join(lines)

    def folded(self, by: str = "inuse_space") -> str:
        """Folded stacks for flame graphs: one ``root;...;leaf value`` line
        per distinct stack, outermost frame first, as flamegraph.pl,
        inferno and speedscope read them. Stacks with no ``by`` are left
        out.

        Parameters
        ----------
        by : {"inuse_space", "inuse_objects", "alloc_space", "alloc_objects"}

        Returns
        -------
        str
        """
        attr = _ATTR[_by_index(by)]
        acc: dict = {}
        for s in self.samples:
            v = getattr(s, attr)
            if v <= 0:
                continue
            key = ";".join(_folded_frame(fr) for fr in reversed(s.stack)) or _NO_STACK.function
            acc[key] = acc.get(key, 0) + v
        return "".join(f"{k} {acc[k]}\n" for k in sorted(acc))


_NO_STACK = Frame("", "[no stack]", 0)


def _frame(f) -> tuple[Frame, int]:
    try:
        n = len(f)
    except TypeError:
        raise TypeError(f"a frame is (filename, function, lineno[, start_line]), not {f!r}") from None
    if n not in (3, 4):
        raise TypeError(f"a frame is (filename, function, lineno[, start_line]), not {f!r}")
    filename, function, lineno = f[0], f[1], f[2]
    start = f[3] if n == 4 else 0
    if filename is None:
        filename = ""
    if not isinstance(filename, str) or not isinstance(function, str):
        raise TypeError(f"frame names must be str: {f!r}")
    if not isinstance(lineno, int) or not isinstance(start, int):
        raise TypeError(f"frame lines must be int: {f!r}")
    return Frame(filename, function, lineno), start


def _by_index(by: str) -> int:
    try:
        return _BY[by]
    except (KeyError, TypeError):
        raise ValueError(f"by must be one of {', '.join(_BY)}; not {by!r}") from None


def _rate_text(rate: int) -> str:
    if rate == 1:
        return "every allocation recorded (rate 1): exact"
    if rate == 0:
        return "rate unknown: unscaled"
    return f"one sample per {_fmt_bytes(rate)} allocated on average: estimates"


def _fmt_bytes(v: int) -> str:
    a = abs(v)
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if a >= 1 << shift:
            return f"{v / (1 << shift):.2f}{unit}"
    return f"{v}B"


def _pct(v: int, total: int) -> str:
    return f"{100.0 * v / total:.2f}%"


def _site_text(fr: Frame) -> str:
    if not fr.filename:
        return fr.function
    return f"{fr.function} {fr.filename}:{fr.lineno}"


def _folded_frame(fr: Frame) -> str:
    # ';' separates frames and a line ends the record: neither may appear
    # inside one. Spaces are fine (the value is after the last space).
    text = fr.function if not fr.filename else f"{fr.function} ({fr.filename}:{fr.lineno})"
    return text.replace(";", ":").replace("\n", " ").replace("\r", " ")


# ---------------------------------------------------------------------------
# profile.proto, encoded by hand (github.com/google/pprof proto/profile.proto;
# the field numbers are Go's tag constants in runtime/pprof/proto.go).

_PROFILE_SAMPLE_TYPE = 1
_PROFILE_SAMPLE = 2
_PROFILE_MAPPING = 3
_PROFILE_LOCATION = 4
_PROFILE_FUNCTION = 5
_PROFILE_STRING_TABLE = 6
_PROFILE_TIME_NANOS = 9
_PROFILE_PERIOD_TYPE = 11
_PROFILE_PERIOD = 12
_VALUETYPE_TYPE = 1
_VALUETYPE_UNIT = 2
_SAMPLE_LOCATION = 1
_SAMPLE_VALUE = 2
_SAMPLE_LABEL = 3
_LABEL_KEY = 1
_LABEL_NUM = 3
_MAPPING_ID = 1
_MAPPING_FILENAME = 5
_MAPPING_HAS_FUNCTIONS = 7
_MAPPING_HAS_FILENAMES = 8
_MAPPING_HAS_LINE_NUMBERS = 9
_LOCATION_ID = 1
_LOCATION_MAPPING_ID = 2
_LOCATION_LINE = 4
_LINE_FUNCTION_ID = 1
_LINE_LINE = 2
_FUNCTION_ID = 1
_FUNCTION_NAME = 2
_FUNCTION_FILENAME = 4
_FUNCTION_START_LINE = 5

_WIRE_VARINT = 0
_WIRE_BYTES = 2


def _varint(out: bytearray, v: int) -> None:
    # int64 fields encode negatives as their 64-bit two's complement.
    v &= _MASK64
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _key(out: bytearray, fieldno: int, wire: int) -> None:
    _varint(out, fieldno << 3 | wire)


def _put_int(out: bytearray, fieldno: int, v: int) -> None:
    # Zero is proto3's default and is left out, as Go's int64Opt does.
    if v:
        _key(out, fieldno, _WIRE_VARINT)
        _varint(out, v)


def _put_bytes(out: bytearray, fieldno: int, data) -> None:
    _key(out, fieldno, _WIRE_BYTES)
    _varint(out, len(data))
    out += data


def _put_packed(out: bytearray, fieldno: int, values) -> None:
    if values:
        body = bytearray()
        for v in values:
            _varint(body, v)
        _put_bytes(out, fieldno, body)


def _encode_profile(p: HeapProfile) -> bytes:
    strings: dict[str, int] = {"": 0}

    def sidx(s: str) -> int:
        i = strings.get(s)
        if i is None:
            i = strings[s] = len(strings)
        return i

    out = bytearray()

    def value_type(fieldno: int, typ: str, unit: str) -> None:
        m = bytearray()
        _put_int(m, _VALUETYPE_TYPE, sidx(typ))
        _put_int(m, _VALUETYPE_UNIT, sidx(unit))
        _put_bytes(out, fieldno, m)

    value_type(_PROFILE_PERIOD_TYPE, "space", "bytes")
    _put_int(out, _PROFILE_PERIOD, p.rate)
    for typ, unit in SAMPLE_TYPES:
        value_type(_PROFILE_SAMPLE_TYPE, typ, unit)

    # One Function per (name, file, start line) and one Location per frame:
    # Python frames have no inlining, so each Location holds one Line.
    functions: dict[tuple, int] = {}
    locations: dict[Frame, int] = {}
    tables = bytearray()
    bytes_key = None
    for s in p.samples:
        loc_ids = []
        for fr in s.stack:
            lid = locations.get(fr)
            if lid is None:
                fkey = (fr.function, fr.filename, p.start_lines.get(fr, 0))
                fid = functions.get(fkey)
                if fid is None:
                    fid = functions[fkey] = len(functions) + 1
                    m = bytearray()
                    _put_int(m, _FUNCTION_ID, fid)
                    _put_int(m, _FUNCTION_NAME, sidx(fkey[0]))
                    # No system_name, unlike Go: pprof demangles a function
                    # whose system name equals its name, and takes Python's
                    # "<module>" or "<lambda>" for C++ template arguments,
                    # which it deletes.
                    _put_int(m, _FUNCTION_FILENAME, sidx(fkey[1]))
                    _put_int(m, _FUNCTION_START_LINE, fkey[2])
                    _put_bytes(tables, _PROFILE_FUNCTION, m)
                lid = locations[fr] = len(locations) + 1
                line = bytearray()
                _put_int(line, _LINE_FUNCTION_ID, fid)
                _put_int(line, _LINE_LINE, fr.lineno)
                m = bytearray()
                _put_int(m, _LOCATION_ID, lid)
                _put_int(m, _LOCATION_MAPPING_ID, 1)
                _put_bytes(m, _LOCATION_LINE, line)
                _put_bytes(tables, _PROFILE_LOCATION, m)
            loc_ids.append(lid)
        m = bytearray()
        _put_packed(m, _SAMPLE_VALUE, (s.alloc_objects, s.alloc_bytes, s.inuse_objects,
                                       s.inuse_bytes))
        _put_packed(m, _SAMPLE_LOCATION, loc_ids)
        if s.block_size:
            # Go labels each heap sample with its object size.
            if bytes_key is None:
                bytes_key = sidx("bytes")
            label = bytearray()
            _put_int(label, _LABEL_KEY, bytes_key)
            _put_int(label, _LABEL_NUM, s.block_size)
            _put_bytes(m, _SAMPLE_LABEL, label)
        _put_bytes(out, _PROFILE_SAMPLE, m)

    # One mapping that says every location is already symbolized, so pprof
    # does not go looking for binaries to symbolize addresses with (Go
    # fakes one the same way when /proc/self/maps is unreadable).
    m = bytearray()
    _put_int(m, _MAPPING_ID, 1)
    _put_int(m, _MAPPING_FILENAME, sidx("python"))
    _put_int(m, _MAPPING_HAS_FUNCTIONS, 1)
    _put_int(m, _MAPPING_HAS_FILENAMES, 1)
    _put_int(m, _MAPPING_HAS_LINE_NUMBERS, 1)
    _put_bytes(out, _PROFILE_MAPPING, m)
    out += tables
    _put_int(out, _PROFILE_TIME_NANOS, p.time_nanos)
    # string_table[0] must be "": every string is written, the empty one
    # included, in index order.
    for s in strings:
        _put_bytes(out, _PROFILE_STRING_TABLE, s.encode("utf-8", "backslashreplace"))
    return bytes(out)
