"""Locally built models for tests, demos and benchmarks (no downloads)."""

from kvmesh.models.local import build_model
from kvmesh.models.shapes import SHAPES, ModelShape, flops_per_kv_byte, get_shape

__all__ = ["SHAPES", "ModelShape", "build_model", "flops_per_kv_byte", "get_shape"]
