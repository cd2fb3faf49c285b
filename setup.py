"""Minimal setup.py: cffi's `cffi_modules` is a setup() keyword that setup.cfg
cannot express.  Everything else lives in setup.cfg.  The extension is
optional: without a C compiler the install succeeds and parallel runs
without the atomics (parallel.shm_helper_available() tells)."""
from setuptools import setup

setup(cffi_modules=["build_shm.py:ffibuilder"])
