"""Test-only stand-in for torchvision: PyPI's build is CUDA-linked and does not
load beside torch 2.13.0+cpu. SGLang 0.5.23 imports it at module level from
multimodal code that a text-only engine never runs."""

from _stand_in import make_stand_in

__version__ = "0.0.0+kvmesh.stand.in"
make_stand_in(__name__, "torchvision is not installed (text-only tests)")
