"""The environment a real vLLM engine in its multiprocess mode needs in these tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def set_multiprocess_env(mp: pytest.MonkeyPatch) -> None:
    """vLLM's engine core and worker in processes of their own, on loopback,
    with compile caches under the checkout and this folder importable in them
    (connector modules the tests name are loaded there)."""
    mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    mp.setenv("VLLM_HOST_IP", "127.0.0.1")
    mp.setenv("VLLM_CACHE_ROOT", str(ROOT / ".cache" / "vllm"))
    mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor"))
    mp.setenv("PYTHONPATH", os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]))
