"""Driving standalone peer processes (`kvmesh peer`, kvmesh/peers/standalone.py).

The protocol: one JSON command per line on the peer's stdin, one JSON reply
per line on its stdout, in order. The first line out is the ready line
({"ready": true, "peer_id": ..., "control_url": ...}). `{"op": "exit"}` asks
the peer to leave the mesh and exit. The peer's stderr is discarded.

`PeerProcess` is the plain driver (the multi-process tests use it, and
tests/netns runs it inside network namespaces through `argv_prefix`);
`BenchPeer` is the benchmarks' flavour. `start_mesh` and `wait_for_members`
start and join several of them.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from typing import Callable, Mapping, Sequence, TypeVar

PEER_ARGV = (sys.executable, "-m", "kvmesh.cli", "peer")

P = TypeVar("P", bound="PeerProcess")


class PeerProcess:
    """One peer process and its pipes.

    The constructor starts the process and returns at once; wait_ready()
    reads the ready line. Replies come back in the order commands were
    written: send() writes and waits for the reply; write() then read()
    leaves the caller free in between (to kill another peer mid-command,
    say). Not thread-safe: one caller drives a peer. The timeouts bound each
    wait for a line in seconds: TimeoutError past them, RuntimeError when the
    peer exits instead of answering.
    """

    # Class attributes, so a subclass that starts its own process (and does
    # not call this constructor) still has them.
    READY_TIMEOUT_S = 60.0
    REPLY_TIMEOUT_S = 60.0

    def __init__(self, env: Mapping[str, str], slot_bytes: int, argv_prefix: Sequence[str] = (),
                 preexec_fn: Callable[[], None] | None = None) -> None:
        """Start `kvmesh peer` with exactly `env`; `argv_prefix` runs it
        through another command (e.g. `ip netns exec <ns>`); `preexec_fn` runs
        in the child before it starts (e.g. to lower its resource limits)."""
        self.proc = subprocess.Popen(
            [*argv_prefix, *PEER_ARGV, "--slot-bytes", str(slot_bytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=dict(env), text=True, bufsize=1, preexec_fn=preexec_fn)
        self.peer_id = self.control_url = ""  # set by wait_ready

    def wait_ready(self: P, timeout: float | None = None) -> P:
        """Read the ready line; sets peer_id and control_url. Once, before any command."""
        ready = self.read(self.READY_TIMEOUT_S if timeout is None else timeout)
        self.peer_id, self.control_url = ready["peer_id"], ready["control_url"]
        return self

    def write(self, op: str, **args) -> None:
        """Send one command without waiting; read() its reply later. Every
        keyword goes into the command, `timeout` included."""
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()

    def read(self, timeout: float | None = None) -> dict:
        """The next reply line."""
        timeout = self.REPLY_TIMEOUT_S if timeout is None else timeout
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"peer gave no answer within {timeout}s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"peer exited with {self.proc.wait()}")
        return json.loads(line)

    def send(self, op: str, timeout: float | None = None, **args) -> dict:
        """write() then read(). `timeout` bounds the wait for the reply and is
        not sent; a command's own `timeout` field goes through write()."""
        self.write(op, **args)
        return self.read(timeout)

    def kill(self) -> None:
        """SIGKILL (no leave notice) unless already gone, then reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        """Ask the peer to exit; kill it if it has not within 10 s."""
        if self.proc.poll() is None:
            try:
                self.write("exit")
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


class BenchPeer(PeerProcess):
    """A peer for benchmarks: patient (big loads take a while) and strict (an
    error reply raises RuntimeError instead of being returned)."""

    READY_TIMEOUT_S = 120.0
    REPLY_TIMEOUT_S = 300.0

    def send(self, op: str, timeout: float | None = None, **args) -> dict:
        reply = super().send(op, timeout, **args)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    # kvmesh.bench.netns.HostBenchPeer reads its ready line with this name.
    _read = PeerProcess.read


def start_mesh(n: int, env: Mapping[str, str], slot_bytes: int, per_peer_env: Mapping | None = None,
               peer_type: type[P] = PeerProcess) -> list[P]:
    """Start `n` peers one after another, each after the first seeded with
    the first's id. Peer i runs with `env`, then the seed, then
    `per_peer_env[i]`. Returns them ready (not yet joined: wait_for_members);
    if one fails to start, the ones started are killed."""
    peers: list[P] = []
    try:
        for i in range(n):
            peer_env = dict(env)
            if peers:
                peer_env["KVMESH_SEEDS"] = peers[0].peer_id
            peer_env.update((per_peer_env or {}).get(i, {}))
            peer = peer_type(peer_env, slot_bytes)
            peers.append(peer)
            peer.wait_ready()
    except BaseException:
        for peer in peers:
            peer.kill()
        raise
    return peers


def wait_for_members(peers: Sequence[PeerProcess], count: int, timeout: float = 15) -> None:
    """Poll status every 0.2 s until every peer sees `count` members; TimeoutError past `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len(p.send("status")["members"]) == count for p in peers):
            return
        time.sleep(0.2)
    raise TimeoutError(f"mesh did not converge to {count} members")


def start_peers(n: int, env: dict[str, str], slot_bytes: int,
                per_peer_env: Mapping[int, Mapping[str, str]] | None = None) -> list[BenchPeer]:
    """A joined mesh of `n` benchmark peers on this host (no control API),
    with `env` over this process's environment (then `per_peer_env[i]` for
    peer i); stopped again if it does not converge within 30 s (TimeoutError)."""
    peers = start_mesh(n, {**os.environ, "KVMESH_CONTROL": "0", **env}, slot_bytes,
                       per_peer_env=per_peer_env, peer_type=BenchPeer)
    try:
        wait_for_members(peers, n, timeout=30)
    except BaseException:
        for p in peers:
            p.stop()
        raise
    return peers
