"""Builds kvmesh's optional C extension; everything else is in pyproject.toml.

The extension only speeds up a few hot loops (kvmesh/native); if it cannot be
compiled (`optional=True`), kvmesh installs anyway and uses the Python twins.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "kvmesh.native._speedups",
    sources=["kvmesh/native/_speedups.c", "kvmesh/native/blocks.c",
             "kvmesh/native/kernels_default.c",
             "kvmesh/native/kernels_avx2.c", "kvmesh/native/kernels_avx512.c",
             "kvmesh/native/quant.c"],
    include_dirs=["kvmesh/native"],
    depends=["kvmesh/native/blocks.h", "kvmesh/native/kernels.h",
             "kvmesh/native/kernels_impl.h", "kvmesh/native/xxhash.h", "kvmesh/native/quant.h",
             "kvmesh/native/quant_kernels.h"],
    extra_compile_args=["-O3"],
    libraries=["m"],
    optional=True,
)])
