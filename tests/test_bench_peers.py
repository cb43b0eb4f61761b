"""bench --peers: its workload runner, in subprocesses, and the driver's
bookkeeping. No timing is asserted and no peer allocator is needed: the
runs here use NumPy's default handler and pyarena's."""

import json
import subprocess
import sys

import pytest

from pyarena import _bench_peers as bp
from support import glibc_malloc

DEFAULT = dict(name="numpy", handler="numpy", env={}, peer=None)
PYARENA = dict(name="pyarena", handler="pyarena", env={}, peer=None)

# The "small" workload at this scale makes 2 steps of 1000 + 500 + 1 arrays
# of 100 float64 each, once to warm up and once timed.
SCALE = 0.01
ARRAYS = 2 * 2 * 1501


def _check_common(res, workload, runs):
    assert res["workload"] == workload
    assert res["scale"] == SCALE
    assert len(res["runs"]) == runs and all(t > 0 for t in res["runs"])
    assert min(res["runs"]) <= res["seconds"] <= max(res["runs"])
    assert res["warmup_seconds"] > 0 and res["cpu_seconds"] > 0
    assert res["minor_faults"] >= 0
    # VmHWM: at least the interpreter and NumPy, which take well over 8 MiB.
    assert res["maxrss_kib"] > 8 << 10
    assert res["preloaded"] == []            # child_env drops any LD_PRELOAD
    assert res["mallopt"] is False


def test_runner_under_numpys_default():
    res = bp.spawn("small", DEFAULT, SCALE, runs=1)
    _check_common(res, "small", 1)
    assert res["handler"] == "default_allocator"
    assert res["pyarena"] is None


def test_runner_under_pyarena_uses_the_handler():
    res = bp.spawn("small", PYARENA, SCALE, runs=1)
    _check_common(res, "small", 1)
    assert res["handler"] == "pyarena"
    st = res["pyarena"]
    # Every array of the workload took its data from pyarena's default heap.
    assert st["mallocs"] >= ARRAYS
    assert st["total_alloc"] >= ARRAYS * 800
    assert st["frees"] <= st["mallocs"] and st["heap_sys"] > 0


def test_runner_command_line_prints_one_json_line():
    cmd = [sys.executable, "-m", "pyarena._bench_peers", "run", "churn", "--handler",
           "pyarena", "--scale", "0.02", "--runs", "2", "--mallopt"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=bp.child_env({}), check=True)
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert res["workload"] == "churn" and res["handler"] == "pyarena" and len(res["runs"]) == 2
    assert res["pyarena"]["mallocs"] >= 3 * 64       # 64 arrays a pass, at the least
    assert res["mallopt"] is glibc_malloc()


def test_runner_refuses_an_unknown_workload():
    r = subprocess.run([sys.executable, "-m", "pyarena._bench_peers", "run", "nosuch"],
                       capture_output=True, text=True, env=bp.child_env({}))
    assert r.returncode == 2 and "invalid choice" in r.stderr
    with pytest.raises(ValueError, match="unknown workload"):
        bp.run_workload("nosuch", "numpy", 1.0)
    with pytest.raises(ValueError, match="handler"):
        bp.run_workload("small", "jemalloc", 1.0)


def test_child_env_sets_blas_threads_and_drops_allocator_settings(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/nonexistent/libfoo.so")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "1")
    env = bp.child_env({"MALLOC_TOP_PAD_": "4096"})
    assert "LD_PRELOAD" not in env and "MALLOC_ARENA_MAX" not in env
    assert env["MALLOC_TOP_PAD_"] == "4096" and env["OPENBLAS_NUM_THREADS"] == "1"


def test_a_missing_peer_is_skipped_with_a_note(monkeypatch):
    monkeypatch.setattr(bp, "PEERS", (("nosuchalloc", ("libnosuchalloc.so.9",), "nosuch-pkg"),))
    assert bp.find_peer(("libnosuchalloc.so.9",)) is None
    configs, notes = bp.configurations()
    assert [c["name"] for c in configs] == ["numpy", "pyarena", "glibc-tuned"]
    assert configs[-1]["env"] == bp.GLIBC_TUNED
    assert notes == ["nosuchalloc: not installed (Debian package nosuch-pkg), skipped"]
    both = bp.combined(configs)
    assert [c["name"] for c in both] == ["pyarena+glibc-tuned", "pyarena+mallopt"]
    assert all(c["handler"] == "pyarena" for c in both)
    assert both[0]["env"] == bp.GLIBC_TUNED and both[1]["mallopt"] is True


def test_run_interleaves_and_tabulates_ratios():
    res = bp.run(progress=False, workloads=["small"], rounds=2, scale=SCALE,
                 configs=[DEFAULT, PYARENA])
    (row,) = res["rows"]
    assert row["workload"] == "small" and set(row["cells"]) == {"numpy", "pyarena"}
    base, ours = row["cells"]["numpy"], row["cells"]["pyarena"]
    assert base["time_ratio"] == base["rss_ratio"] == base["cpu_ratio"] == 1.0
    assert ours["time_ratio"] == pytest.approx(ours["seconds"] / base["seconds"])
    assert len(ours["runs"]) == 2
    table = bp.format_table(res)
    assert "small" in table and "pyarena" in table and "faults/run" in table
    with pytest.raises(ValueError, match="default"):
        bp.run(progress=False, workloads=["small"], configs=[PYARENA])
