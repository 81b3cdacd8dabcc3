"""`kvmesh bench soak`, 15 s with one holder killed: no wrong bytes, no hangs, chunks verified."""

from __future__ import annotations

import json
import os
import sys

import pytest

from kvmesh.bench import report, soak
from kvmesh.bench.procs import PeerProcess

pytestmark = pytest.mark.timeout(120)


def peers_can_start() -> str | None:
    """Why `kvmesh peer` processes cannot run here, or None if one just did."""
    if not sys.platform.startswith("linux") or not hasattr(os, "memfd_create"):
        return "the soak needs Linux (memfd pools, /proc)"
    try:
        peer = PeerProcess({**os.environ, "KVMESH_CONTROL": "0"}, 4096)
    except OSError as exc:
        return f"cannot start a peer process: {exc}"
    try:
        peer.wait_ready(timeout=30)
    except (TimeoutError, RuntimeError, ValueError) as exc:
        return f"a peer process did not start: {exc}"
    finally:
        peer.stop()
    return None


@pytest.fixture(scope="module")
def can_start():
    why = peers_can_start()
    if why:
        pytest.skip(why)


def test_a_short_soak_with_one_kill(can_start, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    status = soak.main(["--minutes", "0.25", "--holders", "2", "--pullers", "1", "--kill-every", "8",
                        "--chunks", "8", "--slot-bytes", str(64 << 10)])
    saved = json.loads((tmp_path / "soak.json").read_text())
    rows = dict(saved["rows"])
    assert status == 0, saved
    assert rows["kills (SIGKILL + restart)"] == 1
    assert rows["chunks with wrong bytes"] == 0
    assert rows["hangs (no load reply within 30s)"] == 0
    assert rows["chunks verified"] > 0
    assert not any(n.startswith("problem") for n in saved["notes"]), saved["notes"]
