"""Real SGLang code over a real two-process mesh (no engine, no model).

SGLang's own StorageBackendFactory builds the kvmesh backend, SGLang's own
key function hashes the token ids, SGLang's own MHATokenToKVPoolHost holds
the pages and SGLang's own HiCacheController methods batch and drive the
calls. One peer lives in this process, the other in `sglang_node.py`.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("sglang", reason="needs SGLang: make sglang-setup, then make test-sglang")

import sglang_pools as sp  # noqa: E402

HERE = Path(__file__).parent
PAGES = 40  # 160 tokens; more than one 128-page batch is covered by test_many_batches


def mesh_env(tmp_path, **extra) -> dict[str, str]:
    env = {"KVMESH_ENABLE": "1", "KVMESH_CONTROL": "0", "KVMESH_CPU_BYTES": "16MiB",
           "KVMESH_RUN_DIR": str(tmp_path / "run"), "KVMESH_TIMEOUT_S": "1"}
    env.update(extra)
    return env


class NodeProcess:
    """`sglang_node.py` in a child process; `call` sends one command, waits for its reply."""

    def __init__(self, env: dict[str, str]) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("KVMESH_")}
        full_env.update(env)
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, str(HERE / "sglang_node.py")], env=full_env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def wait_ready(self) -> "NodeProcess":
        assert self._read(120)["ready"]
        return self

    def call(self, timeout_s: float = 60, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        reply = self._read(timeout_s)
        assert "error" not in reply, reply.get("trace", reply)
        return reply

    def _read(self, timeout_s: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise AssertionError(f"node process gave no reply in {timeout_s}s "
                                 f"(exit code {self.proc.poll()})")
        return json.loads(line)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """Two node processes, started together (each takes seconds to import SGLang)."""
    procs = [NodeProcess(mesh_env(tmp_path_factory.mktemp("node"))) for _ in range(2)]
    try:
        yield [p.wait_ready() for p in procs]
    finally:
        for proc in procs:
            proc.close()


@pytest.fixture(scope="module")
def node(nodes):
    return nodes[0]


@pytest.fixture(scope="module")
def holder(nodes):
    """A node that test_dead_holder kills."""
    return nodes[1]


@pytest.fixture
def mesh_env_here(monkeypatch, tmp_path):
    for name in [n for n in os.environ if n.startswith("KVMESH_")]:
        monkeypatch.delenv(name)
    for name, value in mesh_env(tmp_path).items():
        monkeypatch.setenv(name, value)


def open_here(layout: str, v1: bool):
    pool = sp.host_pool(layout)
    backend = sp.create_backend(pool, sp.storage_config(interface_v1=v1))
    return backend, sp.bare_controller(backend, pool, v1)


@pytest.mark.parametrize("v1", [True, False], ids=["v1", "legacy"])
@pytest.mark.parametrize("layout", sp.LAYOUTS)
def test_pages_cross_processes_bit_exact(node, mesh_env_here, layout, v1):
    backend, here = open_here(layout, v1)
    name = f"{layout}-{v1}"
    try:
        node.call(op="open", name=name, layout=layout, v1=v1, seeds=backend.peer.peer_id)
        # This process backs pages up; the other finds and loads them.
        assert sp.backup(here, sp.prompt(1, PAGES), seed=1) == PAGES * sp.PAGE
        assert node.call(op="query", name=name, seed=1, pages=PAGES)["hit"] == PAGES * sp.PAGE
        got = node.call(op="fetch", name=name, seed=1, pages=PAGES)
        assert got["loaded"] == PAGES * sp.PAGE and all(got["exact"]) and len(got["exact"]) == PAGES
        # And the other way round.
        assert node.call(op="backup", name=name, seed=2, pages=PAGES)["tokens"] == PAGES * sp.PAGE
        assert sp.wait_for_hits(here, sp.prompt(2, PAGES)) == PAGES * sp.PAGE
        hit, loaded, exact = sp.fetch(here, sp.prompt(2, PAGES), seed=2)
        assert loaded == PAGES * sp.PAGE and all(exact)
        # A prompt nobody computed misses; one sharing only its first pages hits those.
        assert sp.query(here, sp.prompt(3, PAGES)) == 0
        forked = sp.prompt(2, 10) + sp.prompt(4, 5)
        assert sp.query(here, forked) == 10 * sp.PAGE
    finally:
        node.call(op="close", name=name)
        backend.close()


def test_many_batches_and_layouts_do_not_mix(node, mesh_env_here):
    """300 pages span three of SGLang's 128-page batches; another layout sees none of them."""
    backend, here = open_here("page_first", True)
    other, other_ctrl = open_here("layer_first", True)
    try:
        node.call(op="open", name="big", layout="page_first", v1=True, seeds=backend.peer.peer_id)
        assert node.call(op="backup", name="big", seed=5, pages=300)["tokens"] == 300 * sp.PAGE
        assert sp.wait_for_hits(here, sp.prompt(5, 300)) == 300 * sp.PAGE
        hit, loaded, exact = sp.fetch(here, sp.prompt(5, 300), seed=5)
        assert loaded == 300 * sp.PAGE and all(exact)
        assert sp.query(other_ctrl, sp.prompt(5, 300)) == 0
    finally:
        node.call(op="close", name="big")
        backend.close()
        other.close()


def test_fault_injector_gives_misses_never_wrong_bytes(node, mesh_env_here, monkeypatch):
    """SGLang's own injector fails and delays calls at random around the real backend."""
    layout = "page_head"
    monkeypatch.setenv("SGLANG_TEST_HICACHE_BACKEND_RANDOM_FAILURE", "0.3")
    monkeypatch.setenv("SGLANG_TEST_HICACHE_BACKEND_RANDOM_DELAY", "0.02")
    backend, here = open_here(layout, True)
    assert type(backend).__name__ == "HiCacheStorageFailureInjector"
    try:
        node.call(op="open", name="faults", layout=layout, v1=True,
                  seeds=backend._backend.peer.peer_id)
        assert node.call(op="backup", name="faults", seed=9, pages=20)["tokens"] == 20 * sp.PAGE
        outcomes = set()
        for _ in range(25):
            start = time.monotonic()
            hit, loaded, exact = sp.fetch(here, sp.prompt(9, 20), seed=9)
            assert time.monotonic() - start < 5
            assert all(exact) and loaded <= hit
            outcomes.add(loaded == 20 * sp.PAGE)
            sp.backup(here, sp.prompt(10, 5), seed=10)  # backups may fail; never corrupt
        assert outcomes == {True, False}
        loaded_ok = sp.fetch(here, sp.prompt(10, 5), seed=10)[2]
        assert all(loaded_ok)
    finally:
        node.call(op="close", name="faults")
        backend.close()


def test_dead_holder_reads_as_a_miss_within_the_timeout(holder, mesh_env_here):
    backend, here = open_here("page_first", True)
    try:
        holder.call(op="open", name="h", layout="page_first", v1=True, seeds=backend.peer.peer_id)
        assert holder.call(op="backup", name="h", seed=11, pages=30)["tokens"] == 30 * sp.PAGE
        assert sp.wait_for_hits(here, sp.prompt(11, 30)) == 30 * sp.PAGE
        holder.kill()
        start = time.monotonic()
        hit, loaded, exact = sp.fetch(here, sp.prompt(11, 30), seed=11)
        # The timeout is 1 s: a lookup takes at most 2, a load at most 1 more.
        assert time.monotonic() - start < 4.5
        assert loaded == 0 and exact == []
    finally:
        backend.close()
