"""`kvmesh demo`: several vLLM engines on this machine sharing KV through the mesh."""

from kvmesh.demo.main import main

__all__ = ["main"]
