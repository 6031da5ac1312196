from setuptools import setup

setup(cffi_modules=["cpg/_build.py:ffibuilder"])
