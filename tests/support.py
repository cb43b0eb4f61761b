"""Helpers several test modules share."""

import os
from pathlib import Path

import pyarena


def glibc_malloc() -> bool:
    """Whether malloc is glibc's own, so that mallopt (tune_malloc) takes:
    not under a sanitizer's runtime (the ASAN pass of CI), whose malloc
    replaces glibc's and refuses mallopt."""
    import platform

    from pyarena import _testing
    return platform.libc_ver()[0] == "glibc" and not _testing.sanitizers()["address"]


def pyarena_env(**extra: str) -> dict[str, str]:
    """The current environment for a subprocess, with the directory holding
    the pyarena under test first on PYTHONPATH (whatever the subprocess's
    working directory), plus extra variables."""
    env = dict(os.environ)
    root = str(Path(pyarena.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env
