"""Compiled hot paths: every ``nodes/**/*.pyx`` becomes an optional C extension beside it.

The metadata is in pyproject.toml; this file only lists the extensions. They are optional: a
machine without a C compiler still installs the package, whose pure-Python reference code then
runs (``nodes.compiled`` logs which path is in use). ``make`` builds them in place with
``setup.py build_ext --inplace`` (gcc and Python's headers from Debian, Cython from PyPI).
"""
from glob import glob

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # no Cython: no extensions, the reference code runs
    cythonize = None

DIRECTIVES = {"language_level": 3, "boundscheck": False, "wraparound": False, "cdivision": True,
              "initializedcheck": False}


def extensions() -> list:
    if cythonize is None:
        return []
    sources = sorted(glob("nodes/**/*.pyx", recursive=True))
    exts = [Extension(src[:-4].replace("/", "."), [src], extra_compile_args=["-O2"], optional=True)
            for src in sources]
    return cythonize(exts, compiler_directives=DIRECTIVES, quiet=True)


setup(ext_modules=extensions())
