"""Shared setup for the SGLang connector tests.

Where SGLang is installed (the `.venv-sglang` venv, see mk/sglang.mk), the
test-only stand-ins under shims/stubs (torchvision, which PyPI only ships
CUDA-linked) are put on sys.path, and on PYTHONPATH for the processes the
tests start. Elsewhere nothing is changed and the SGLang tests skip.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

STUBS = Path(__file__).parent / "shims" / "stubs"
HAVE_SGLANG = importlib.util.find_spec("sglang") is not None

if HAVE_SGLANG and str(STUBS) not in sys.path:
    sys.path.append(str(STUBS))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (os.environ.get("PYTHONPATH"), str(STUBS)) if p)


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "sglang_engine: starts real SGLang engines on CPU (slow; needs .venv-sglang)")
