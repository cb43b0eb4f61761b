"""``python -m pyarena bench --peers``: pyarena's NumPy handler beside the
allocators users pick instead of it.

A user who wants NumPy's temporaries faster without pyarena preloads a
general-purpose malloc (jemalloc, mimalloc, tcmalloc) or tunes glibc's. This
bench runs NumPy workloads under each of those and under pyarena's NEP 49
handler, and reports time and peak RSS relative to NumPy's default
allocator (glibc malloc behind NumPy's small-block cache).

How it measures:

- Every (workload, configuration) pair is a fresh process running this
  module as a workload runner (``python -m pyarena._bench_peers run NAME``).
  A preloaded allocator must be in place before the first malloc, so only
  a fresh process is fair to all configurations alike.
- Inside the runner, the workload runs once to warm up (first touch of
  every page, plan caches, BLAS buffers) and then ``RUNS`` more times; the
  process reports the median of those, the steady state of code that makes
  temporaries in a loop, and its VmHWM (peak RSS of its own address space:
  ru_maxrss of a child would carry the parent's peak across fork and exec).
- The runner also reports its CPU time (user and sys) and minor page
  faults over the timed runs. Faults are exact where times are not on a
  shared machine, and they are most of what a better allocator saves: a
  page given back to the OS, or never reused, faults in again.
- Rounds interleave the configurations, one process of each per workload,
  and rotate which one goes first; the table shows medians over rounds and
  their ratios to NumPy's default in the same run.
- OPENBLAS_NUM_THREADS=1 for every configuration, so linear algebra times
  allocation and one core's arithmetic rather than thread start-up on a
  shared machine. Inherited LD_PRELOAD and MALLOC_* variables are dropped.

Configurations: ``numpy`` (the default), ``pyarena``
(``pyarena.install_numpy_allocator()`` at the workload's start, before its
inputs are made), each peer found by ldconfig through LD_PRELOAD (skipped
with a note when missing, or when the runner does not see it mapped), and
``glibc-tuned`` (GLIBC_TUNED below: no mmap for blocks below 32 MiB, no
trimming below 1 GiB, 256 MiB of slack per heap growth).

What pyarena's handler cannot reach: NumPy's data handler serves array data
only. Scratch that NumPy's LAPACK and FFT wrappers, OpenBLAS, ufunc buffers
and the interpreter take from malloc goes to libc whatever the handler is,
while an LD_PRELOADed malloc serves all of it. tools/traffic.py measures
each workload's split. ``python -m pyarena._bench_peers table --combined``
adds pyarena's handler together with each malloc configuration, and with
glibc tuned from inside the running process by mallopt(3)
(``pyarena+mallopt``, see tune_glibc_malloc): the handler for array data,
libc for the rest.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

from pyarena._bench import Progress

RUNS = 3                       # timed runs per process, after one warm-up
DEFAULT = "numpy"

# glibc tuned as its manual suggests for programs that churn large blocks:
# blocks below 32 MiB come from the heap instead of fresh mmaps (whose every
# page faults in again), the heap is not trimmed back below 1 GiB, and each
# growth of it takes 256 MiB more than asked so that growing is rare.
GLIBC_TUNED = {
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_TOP_PAD_": str(256 << 20),
}

# The same settings through mallopt(3), for a process already running
# (pyarena.tune_malloc's arguments).
MALLOPT_VALUES = dict(trim_threshold=1 << 30, top_pad=256 << 20, mmap_threshold=32 << 20)

# (name, sonames to look for, the Debian package that provides one).
PEERS = (
    ("jemalloc", ("libjemalloc.so.2",), "libjemalloc2"),
    ("mimalloc", ("libmimalloc.so.2", "libmimalloc.so.2.0"), "libmimalloc2.0"),
    ("tcmalloc", ("libtcmalloc_minimal.so.4",), "libtcmalloc-minimal4"),
)

# Directories to look in when ldconfig is not there to ask.
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
            "/usr/lib64", "/usr/lib", "/usr/local/lib")


# ---------------------------------------------------------------------------
# Workloads. Each maker does its set-up (inputs, random streams) and returns
# the function the runner times; scale multiplies the work of one run, and
# at scale 1 one run takes about 0.2-0.4 s on the project's machine.

def make_temporaries(scale: float):
    """Element-wise arithmetic on float64 arrays of 1 KiB to 64 MiB, five
    temporaries per step; about the same bytes processed at each size."""
    sizes = (1 << 10, 16 << 10, 256 << 10, 4 << 20, 64 << 20)
    inputs = [(np.ones(n // 8), np.full(n // 8, 0.5)) for n in sizes]
    # Steps per size: a fixed byte budget, with a floor of per-call cost
    # so that the small sizes, which are call-bound, do not take over.
    steps = [max(1, int(scale * (40 << 20) / max(n, 16 << 10))) for n in sizes]

    def run() -> float:
        s = 0.0
        for (a, b), k in zip(inputs, steps):
            for _ in range(k):
                c = a * 2.0 + b
                d = np.sqrt(c)
                e = (d - a) * b
                s += float(e[-1])
        return s
    return run


def make_image(scale: float):
    """A 2048x2048 float32 image: blur by shifted adds, normalise, clip,
    threshold; every step makes 16 MiB temporaries."""
    rng = np.random.default_rng(1)
    img = rng.random((2048, 2048), dtype=np.float32)
    steps = max(1, round(4 * scale))

    def run() -> float:
        s = 0.0
        for _ in range(steps):
            c = img[1:-1, 1:-1]
            blur = (c + img[:-2, 1:-1] + img[2:, 1:-1] + img[1:-1, :-2] + img[1:-1, 2:]) * 0.2
            norm = (blur - blur.mean()) / blur.std()
            clipped = np.clip(norm, -2.0, 2.0)
            mask = clipped > 0.5
            out = np.where(mask, clipped, np.float32(0))
            s += float(out[7, 7]) + int(mask.sum())
        return s
    return run


def make_small(scale: float):
    """Many 100-element float64 arrays (800 B of data each): a thousand made
    and kept, combined pairwise, dropped together; call-bound."""
    base = np.arange(100, dtype=np.float64)
    steps = max(1, round(200 * scale))

    def run() -> float:
        s = 0.0
        for _ in range(steps):
            xs = [base + k for k in range(1000)]
            ys = [x * y for x, y in zip(xs[::2], xs[1::2])]
            s += float(np.sqrt(ys[-1])[3])
        return s
    return run


def make_churn(scale: float):
    """Arrays of log-uniform random sizes from 64 B to 8 MiB (fixed seed),
    alternately np.empty and np.zeros, each written once per 4 KiB page and
    kept in a ring of 32 until a later one replaces it."""
    rng = np.random.default_rng(2)
    n = max(64, int(3000 * scale))
    sizes = [int(x) for x in np.exp(rng.uniform(math.log(64), math.log(8 << 20), n))]

    def run() -> float:
        ring = [None] * 32
        s = 0
        for i, size in enumerate(sizes):
            a = (np.empty if i & 1 else np.zeros)(size, np.uint8)
            a[::4096] = 1
            ring[i & 31] = a
            s += int(a[-1])
        return float(s)
    return run


def make_linalg(scale: float):
    """256x256 float64 linear algebra: matmul, solve, inverse, SVD, and the
    symmetric eigenproblem (eigh: a covariance matrix's, say)."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((256, 256))
    b = rng.standard_normal((256, 256))
    rhs = rng.standard_normal((256, 4))
    sym = a @ a.T
    steps = max(1, round(9 * scale))

    def run() -> float:
        s = 0.0
        for _ in range(steps):
            c = a @ b
            x = np.linalg.solve(a, rhs)
            inv = np.linalg.inv(c)
            sv = np.linalg.svd(a, compute_uv=True)[1]
            w = np.linalg.eigh(sym)[0]
            s += float(c[0, 0] + x[0, 0] + inv[0, 0] + sv[0] + w[-1])
        return s
    return run


def make_fft(scale: float):
    """FFTs: a batch of 256 real signals of 4096 points there and back, a
    512x512 complex 2-D transform, and a prime length (Bluestein's path)."""
    rng = np.random.default_rng(4)
    sig = rng.standard_normal((256, 4096))
    img = rng.standard_normal((512, 512)) + 1j * rng.standard_normal((512, 512))
    prime = rng.standard_normal(10007)
    steps = max(1, round(12 * scale))

    def run() -> float:
        s = 0.0
        for _ in range(steps):
            spec = np.fft.rfft(sig, axis=-1)
            back = np.fft.irfft(spec * 0.5, n=4096, axis=-1)
            f2 = np.fft.fft2(img)
            fp = np.fft.fft(prime)
            s += float(back[0, 0] + f2[1, 1].real + fp[2].real)
        return s
    return run


# name -> (maker, one line for the table's legend)
WORKLOADS = {
    "temporaries": (make_temporaries, "element-wise temporaries, 1 KiB - 64 MiB"),
    "image": (make_image, "2048x2048 float32 blur/normalise/clip/threshold"),
    "small": (make_small, "many 100-element arrays"),
    "churn": (make_churn, "log-uniform 64 B - 8 MiB, ring of 32 live"),
    "linalg": (make_linalg, "256x256 matmul, solve, inv, svd, eigh"),
    "fft": (make_fft, "rfft/irfft batch, fft2 512x512, prime length"),
}


# ---------------------------------------------------------------------------
# The runner: one workload in this process, JSON on stdout.

def _vm_hwm_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def _mapped_peers() -> list[str]:
    """The peers' libraries mapped into this process: proof that a preload
    took (ld.so only warns when it cannot load one, and carries on)."""
    found = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.rsplit(None, 1)[-1]
            for name, _, _ in PEERS:
                if name in os.path.basename(path):
                    found.add(name)
    return sorted(found)


def tune_glibc_malloc() -> bool:
    """glibc tuned as the tuned-glibc configuration is, from inside the
    process: pyarena.tune_malloc with the same three values."""
    from pyarena import tune_malloc
    return tune_malloc(**{name: value for name, value in MALLOPT_VALUES.items()})


def run_workload(name: str, handler: str, scale: float, runs: int = RUNS,
                 mallopt: bool = False) -> dict:
    """Run workload ``name`` here: tune glibc's malloc first when
    ``mallopt``, install pyarena's handler when ``handler == "pyarena"``,
    make the inputs, run once to warm up, then ``runs`` timed runs. Returns
    what the runner prints."""
    import pyarena
    from pyarena._numpy_allocator import current_handler_name

    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; one of {', '.join(WORKLOADS)}")
    if handler not in ("numpy", "pyarena"):
        raise ValueError(f"handler must be 'numpy' or 'pyarena', not {handler!r}")
    tuned = tune_glibc_malloc() if mallopt else False
    if handler == "pyarena":
        pyarena.install_numpy_allocator()
    work = WORKLOADS[name][0](scale)
    t0 = time.perf_counter()
    work()
    warmup = time.perf_counter() - t0
    times = []
    # Page faults are the allocators' main cost beyond their own code (a
    # fresh or trimmed page faults in again at first touch); they are
    # counted exactly, where times on a shared machine are not.
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(runs):
        t0 = time.perf_counter()
        work()
        times.append(time.perf_counter() - t0)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    faults = (ru.ru_minflt - ru0.ru_minflt) / runs
    user = (ru.ru_utime - ru0.ru_utime) / runs
    sys_ = (ru.ru_stime - ru0.ru_stime) / runs
    st = pyarena.default_heap().stats() if handler == "pyarena" else None
    return dict(
        workload=name, handler=current_handler_name(), scale=scale,
        seconds=statistics.median(times), runs=times, warmup_seconds=warmup,
        cpu_seconds=user + sys_, user_seconds=user, sys_seconds=sys_, minor_faults=faults,
        mallopt=tuned,
        maxrss_kib=_vm_hwm_kib(), preloaded=_mapped_peers(),
        pyarena=None if st is None else dict(mallocs=st.mallocs, frees=st.frees,
                                             total_alloc=st.total_alloc,
                                             heap_sys=st.heap_sys),
    )


# ---------------------------------------------------------------------------
# The driver: configurations, interleaved rounds, the table.

def _ldconfig_paths() -> dict[str, str]:
    for exe in ("/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"):
        try:
            out = subprocess.run([exe, "-p"], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            continue
        paths = {}
        for line in out.splitlines():
            if "=>" in line:
                soname = line.split()[0]
                paths.setdefault(soname, line.split("=>", 1)[1].strip())
        return paths
    return {}


def find_peer(sonames: tuple[str, ...], known: dict[str, str] | None = None) -> str | None:
    """The path of the first of sonames that is installed, or None."""
    known = _ldconfig_paths() if known is None else known
    for so in sonames:
        if so in known and os.path.exists(known[so]):
            return known[so]
        for d in LIB_DIRS:
            p = os.path.join(d, so)
            if os.path.exists(p):
                return p
    return None


def configurations() -> tuple[list[dict], list[str]]:
    """The configurations to run, and a note for each peer skipped. A
    configuration is a name, the handler the runner installs, the
    environment variables it adds, and the peer it preloads (or None)."""
    configs = [dict(name=DEFAULT, handler="numpy", env={}, peer=None),
               dict(name="pyarena", handler="pyarena", env={}, peer=None)]
    notes = []
    known = _ldconfig_paths()
    for name, sonames, package in PEERS:
        path = find_peer(sonames, known)
        if path is None:
            notes.append(f"{name}: not installed (Debian package {package}), skipped")
        else:
            configs.append(dict(name=name, handler="numpy", env={"LD_PRELOAD": path}, peer=name))
    configs.append(dict(name="glibc-tuned", handler="numpy", env=dict(GLIBC_TUNED), peer=None))
    return configs, notes


def combined(configs: list[dict]) -> list[dict]:
    """pyarena's handler for array data together with each malloc
    configuration for the rest: ``pyarena+tcmalloc``, ``pyarena+glibc-tuned``
    ..., and ``pyarena+mallopt`` (glibc tuned from inside the process by
    tune_glibc_malloc, before the handler is installed)."""
    both = [dict(name=f"pyarena+{c['name']}", handler="pyarena", env=dict(c["env"]),
                 peer=c["peer"]) for c in configs if c["env"]]
    return both + [dict(name="pyarena+mallopt", handler="pyarena", env={}, peer=None,
                        mallopt=True)]


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a runner: this one without allocator settings,
    one BLAS thread, pyarena importable from where this copy lives, plus
    ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k != "LD_PRELOAD" and not k.startswith("MALLOC_")}
    env["OPENBLAS_NUM_THREADS"] = "1"
    src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env.update(extra)
    # A sanitizer's runtime stays, first (an ASAN build of pyarena cannot
    # load without it); it is not a peer, and replaces malloc for all.
    sanitizers = [p for p in os.environ.get("LD_PRELOAD", "").split()
                  if os.path.basename(p).startswith(("libasan", "libclang_rt.asan"))]
    if sanitizers:
        env["LD_PRELOAD"] = " ".join(sanitizers + env.get("LD_PRELOAD", "").split())
    return env


def spawn(workload: str, config: dict, scale: float, runs: int = RUNS,
          timeout: float = 600) -> dict:
    """One runner process for (workload, config); its JSON as a dict."""
    cmd = [sys.executable, "-m", "pyarena._bench_peers", "run", workload,
           "--handler", config["handler"], "--scale", repr(scale), "--runs", str(runs)]
    if config.get("mallopt"):
        cmd.append("--mallopt")
    r = subprocess.run(cmd, capture_output=True, text=True, env=child_env(config["env"]),
                       timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{workload} under {config['name']} exited {r.returncode}: "
                           f"{r.stderr.strip()[-500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(quick: bool = False, progress: bool = True, workloads=None,
        with_combined: bool = False, rounds: int | None = None, scale: float | None = None,
        configs: list[dict] | None = None) -> dict:
    """Every workload under every configuration, interleaved; plain data
    (see --json). ``with_combined`` adds pyarena's handler over each malloc
    configuration (see ``combined``); ``configs`` replaces the list that
    ``configurations()`` finds (it must hold NumPy's default)."""
    rounds = rounds or (3 if quick else 7)
    scale = scale or (0.25 if quick else 1.0)
    names = list(workloads or WORKLOADS)
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {', '.join(unknown)}; one of {', '.join(WORKLOADS)}")
    if configs is None:
        configs, notes = configurations()
    else:
        configs, notes = list(configs), []
    if not any(c["name"] == DEFAULT for c in configs):
        raise ValueError(f"the configurations must include NumPy's default ({DEFAULT!r})")
    if with_combined:
        configs += combined(configs)
    prog = Progress(rounds * len(names) * len(configs), progress)
    raw = {w: {c["name"]: [] for c in configs} for w in names}
    failed: dict[str, str] = {}
    for rnd in range(rounds):
        for w in names:
            # Rotate the order each round: no configuration always runs
            # first (or last) on a cache and a page-cache that others warmed.
            k = rnd % len(configs)
            for c in configs[k:] + configs[:k]:
                prog.step(f"peers {w} {c['name']}")
                if c["name"] in failed:
                    continue
                try:
                    res = spawn(w, c, scale)
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
                    failed[c["name"]] = str(e)
                    continue
                if c["peer"] is not None and c["peer"] not in res["preloaded"]:
                    failed[c["name"]] = "LD_PRELOAD did not take (library not mapped)"
                    continue
                if c.get("mallopt") and not res["mallopt"]:
                    failed[c["name"]] = "mallopt refused (not glibc?)"
                    continue
                raw[w][c["name"]].append(res)
    prog.close()
    for name, why in failed.items():
        notes.append(f"{name}: failed, left out: {why}")
    rows = []
    for w in names:
        base = raw[w][DEFAULT]
        if not base or DEFAULT in failed:
            rows.append(dict(workload=w, description=WORKLOADS[w][1], cells={}))
            continue
        t0 = statistics.median(r["seconds"] for r in base)
        m0 = statistics.median(r["maxrss_kib"] for r in base)
        u0 = statistics.median(r["cpu_seconds"] for r in base)
        cells = {}
        for c in configs:
            rs = raw[w][c["name"]]
            if not rs or c["name"] in failed:
                continue
            t = statistics.median(r["seconds"] for r in rs)
            u = statistics.median(r["cpu_seconds"] for r in rs)
            m = statistics.median(r["maxrss_kib"] for r in rs)
            cells[c["name"]] = dict(seconds=t, cpu_seconds=u, maxrss_kib=m, time_ratio=t / t0,
                                    cpu_ratio=u / u0, rss_ratio=m / m0,
                                    runs=[r["seconds"] for r in rs],
                                    minor_faults=statistics.median(r["minor_faults"]
                                                                   for r in rs),
                                    sys_seconds=statistics.median(r["sys_seconds"] for r in rs))
        rows.append(dict(workload=w, description=WORKLOADS[w][1], cells=cells))
    return dict(rounds=rounds, scale=scale, runs_per_process=RUNS, numpy=np.__version__,
                configs=[c for c in configs if c["name"] not in failed],
                notes=notes, rows=rows)


# The tables of format_table: title, the cell's ratio (None: print the
# value itself), its value, and how to print NumPy's default's value.
TABLES = (
    ("time", "time_ratio", "seconds", lambda v: f"{v:7.3f} s"),
    ("CPU time", "cpu_ratio", "cpu_seconds", lambda v: f"{v:7.3f} s"),
    ("peak RSS", "rss_ratio", "maxrss_kib", lambda v: f"{v / 1024:5.0f} MiB"),
    ("faults/run", None, "minor_faults", lambda v: f"{v:9,.0f}"),
)


def format_table(results: dict) -> str:
    names = [c["name"] for c in results["configs"] if c["name"] != DEFAULT]
    widths = [max(7, len(n)) for n in names]
    head = " ".join(f"{n:>{w}}" for n, w in zip(names, widths))
    out = [f"NumPy workloads under each allocator: a fresh process per run, warm-up then "
           f"median of {results['runs_per_process']}; medians of {results['rounds']} "
           f"interleaved rounds (scale {results['scale']:g}), OPENBLAS_NUM_THREADS=1.",
           "Time, CPU time (the process's user+sys: steadier than wall time on a shared "
           "machine) and peak RSS",
           "as ratios to NumPy's default allocator in the same run (below 1: better); minor "
           "page faults per run as counted.", ""]
    for title, ratio, value, show in TABLES:
        out.append(f"{title:<12} {'numpy':>9} | {head} | {'fewest' if ratio is None else 'best'}")
        for row in results["rows"]:
            cells = row["cells"]
            if DEFAULT not in cells:
                out.append(f"{row['workload']:<12} (NumPy's default failed: no ratios)")
                continue
            key = ratio or value
            fmt = "{:%d.2f}" if ratio else "{:%d,.0f}"
            vals = " ".join((fmt % w).format(cells[n][key]) if n in cells else f"{'-':>{w}}"
                            for n, w in zip(names, widths))
            best = min(cells, key=lambda n: cells[n][key])
            out.append(f"{row['workload']:<12} {show(cells[DEFAULT][value]):>9} | {vals} | {best}")
        out.append("")
    out.append("workloads: " + "; ".join(f"{r['workload']}: {r['description']}"
                                         for r in results["rows"]))
    out.append("glibc-tuned: " + " ".join(f"{k}={v}" for k, v in GLIBC_TUNED.items()))
    for n in results["notes"]:
        out.append(f"({n})")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pyarena._bench_peers",
                                description="The workload runner of bench --peers.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one workload in this process, print JSON")
    r.add_argument("workload", choices=sorted(WORKLOADS))
    r.add_argument("--handler", choices=("numpy", "pyarena"), default="numpy")
    r.add_argument("--scale", type=float, default=1.0)
    r.add_argument("--runs", type=int, default=RUNS)
    r.add_argument("--mallopt", action="store_true",
                   help="tune glibc's malloc by mallopt(3) before the workload starts")
    t = sub.add_parser("table", help="bench --peers with more choices")
    t.add_argument("workloads", nargs="*", help="default: every workload")
    t.add_argument("--quick", action="store_true")
    t.add_argument("--json", action="store_true")
    t.add_argument("--rounds", type=int)
    t.add_argument("--combined", action="store_true",
                   help="also pyarena's handler with each peer or tuned glibc for malloc")
    args = p.parse_args(argv)
    if args.cmd == "table":
        res = run(args.quick, not args.json and sys.stderr.isatty(), args.workloads,
                  args.combined, args.rounds)
        print(json.dumps(res, indent=2) if args.json else format_table(res))
        return 0
    if args.scale <= 0 or args.runs < 1:
        p.error("--scale must be positive and --runs at least 1")
    print(json.dumps(run_workload(args.workload, args.handler, args.scale, args.runs,
                                  args.mallopt)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
