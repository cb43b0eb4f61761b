"""Build pyarena's Cython extension modules.

Every ``src/pyarena/*.pyx`` becomes one extension module, compiled with
optimisation on and Cython's safety checks off (the allocator checks its own
inputs at the Python boundary).
"""
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

SRC = Path("src") / "pyarena"

extensions = [
    Extension(
        f"pyarena.{pyx.stem}",
        [str(pyx)],
        include_dirs=[str(SRC), numpy.get_include()],
        extra_compile_args=["-O3"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for pyx in sorted(SRC.glob("*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=["src"],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
