"""The soak's peers: holders that are killed and come back, pullers that load and verify.

Every peer is a `kvmesh peer` process (`procs.PeerProcess`) on loopback with
one mesh secret and a full directory. Pullers start first and are never
killed; the first is every other peer's seed, so a restarted holder always
finds the mesh. A holder fills SHARED_SEED (which every holder holds) and its
own seed (which only it holds), so while it is down its own chunks are
missed and the shared ones come from the others.

Commands go out without waiting (`PeerProcess.write`) and replies are taken
when `select` says a line is there, so one thread drives every peer and a
restart never stalls the pulls. One command at a time per peer: at most one
reply line is ever pending, so a readable pipe means a whole reply.
"""

from __future__ import annotations

import os
import select
import time
from dataclasses import dataclass, field

from kvmesh.bench.procs import PeerProcess

SHARED_SEED = 1
OWN_SEED_BASE = 100  # holder i's own chunks: seed OWN_SEED_BASE + i
SECRET = "soak-mesh-secret"


@dataclass(frozen=True)
class MeshShape:
    holders: int
    pullers: int
    slot_bytes: int
    chunks: int  # per seed
    run_dir: str

    def env(self) -> dict[str, str]:
        cpu_bytes = (self.holders + 2) * self.chunks * self.slot_bytes
        return {**os.environ, "KVMESH_CONTROL": "0", "KVMESH_SECRET": SECRET,
                "KVMESH_FULL_DIRECTORY_UPTO": "64", "KVMESH_CHUNK_TOKENS": "16",
                "KVMESH_CPU_BYTES": str(cpu_bytes), "KVMESH_TIMEOUT_S": "2",
                "KVMESH_PROBE_INTERVAL_S": "0.2", "KVMESH_RUN_DIR": self.run_dir,
                "KVMESH_HOST": "127.0.0.1"}

    def seeds(self) -> list[int]:
        return [SHARED_SEED, *(OWN_SEED_BASE + i for i in range(self.holders))]


def readable(proc: PeerProcess) -> bool:
    return bool(select.select([proc.proc.stdout], [], [], 0)[0])


@dataclass
class Holder:
    """One holder slot: its process, port and where it is in a restart (up/starting/filling)."""

    index: int
    proc: PeerProcess
    port: int = 0
    peer_id: str = ""
    state: str = "up"
    since: float = 0.0
    restarts: int = 0
    restart_s: list[float] = field(default_factory=list)  # kill to refilled, per restart
    new_identity: int = 0  # restarts that could not keep the port (so came back as another peer)


@dataclass
class Puller:
    proc: PeerProcess
    own_inode: int | None = None
    busy_since: float | None = None  # a load is out
    flagged_hang: bool = False
    seconds_max: float = 0.0


def start_holder(shape: MeshShape, seed_peer: str, port: int = 0) -> PeerProcess:
    env = {**shape.env(), "KVMESH_SEEDS": seed_peer, "KVMESH_PORT": str(port)}
    return PeerProcess(env, shape.slot_bytes)


def fill_holder(shape: MeshShape, holder: Holder) -> None:
    """Fill synchronously (at the start of the soak)."""
    for seed in (SHARED_SEED, OWN_SEED_BASE + holder.index):
        reply = holder.proc.send("fill", seed=seed, chunks=shape.chunks)
        if reply.get("stored") != shape.chunks:
            raise RuntimeError(f"holder {holder.index} stored {reply} of {shape.chunks}")


def kill_and_restart(shape: MeshShape, holder: Holder, seed_peer: str, now: float) -> None:
    """SIGKILL the holder and start it again on its port (it comes back as the same peer)."""
    holder.proc.kill()
    holder.proc = start_holder(shape, seed_peer, holder.port)
    holder.state, holder.since = "starting", now
    holder.restarts += 1


def step_restart(shape: MeshShape, holder: Holder, seed_peer: str, now: float) -> None:
    """Move a restarting holder on: ready -> fill both seeds -> up. A process that died
    while starting (its port taken) starts again on any port, as a new peer."""
    if holder.state == "starting":
        if holder.proc.proc.poll() is not None:
            holder.proc = start_holder(shape, seed_peer, 0)
            holder.new_identity += 1
            holder.port = 0
            return
        if readable(holder.proc):
            holder.proc.wait_ready(timeout=5)
            holder.peer_id = holder.proc.peer_id
            holder.port = int(holder.peer_id.rsplit(":", 1)[1])
            holder.proc.write("fill", seed=SHARED_SEED, chunks=shape.chunks)
            holder.state = "filling"
        return
    if holder.state.startswith("filling") and readable(holder.proc):
        holder.proc.read(timeout=5)
        if holder.state == "filling":
            holder.proc.write("fill", seed=OWN_SEED_BASE + holder.index, chunks=shape.chunks)
            holder.state = "filling own"
        else:
            holder.state = "up"
            holder.restart_s.append(now - holder.since)


def wait_all_up(shape: MeshShape, holders: list[Holder], seed_peer: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(h.state == "up" for h in holders):
            return True
        for h in holders:
            if h.state != "up":
                step_restart(shape, h, seed_peer, time.monotonic())
        time.sleep(0.05)
    return False
