#!/usr/bin/python3
"""Compile the cffi extension of cpg/_build.py into the current directory.

Run from an empty directory: cffi compiles through setuptools, which would otherwise read the
project's pyproject.toml (Debian 12's setuptools cannot parse its SPDX licence string).
"""

import importlib.util
import sys

spec = importlib.util.spec_from_file_location("cpg_build", sys.argv[1])
assert spec is not None and spec.loader is not None
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(module.ffibuilder.compile(tmpdir=".", verbose=True))
