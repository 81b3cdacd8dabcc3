"""Test-only stand-in for sgl_kernel (sglang-kernel): PyPI has CUDA builds only.

SGLang 0.5.23's CPU engine imports CPU kernels from it at load time; on a CPU
without AMX the layers fall back to native torch and never call them. A call
raises, so a test can never pass on a kernel that did not run.
"""

from _stand_in import make_stand_in

__version__ = "0.4.10+kvmesh.stand.in"
make_stand_in(__name__, "sgl_kernel has no CPU build on PyPI")
