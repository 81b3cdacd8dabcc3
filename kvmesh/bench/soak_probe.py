"""Readings of one process from /proc, for the soak: memory, descriptors and mapped pools.

A peer shares its CPU pool with same-host peers as a memfd named
"kvmesh-pool", so the pools of others that a puller has mapped show in its
/proc/<pid>/maps as "/memfd:kvmesh-pool (deleted)" lines of another inode
than its own pool's. A holder that dies must not leave its pool mapped in
the puller: those mappings are what `ProcReading.foreign_pools` counts.
Linux only; reading another process needs the same user (the soak starts
them). Pure reads, any thread.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

POOL_NAME = "memfd:kvmesh-pool"
SHM_DIR = Path("/dev/shm")


@dataclass(frozen=True)
class ProcReading:
    rss_bytes: int
    open_fds: int
    foreign_pools: int  # distinct pools of other processes mapped (by inode)
    foreign_mappings: int  # their mapping lines (a pool may be mapped in pieces)
    foreign_bytes: int  # the address space those mappings take


def pool_mappings(pid: int, own_inode: int | None) -> list[tuple[int, int]]:
    """(inode, bytes) of each mapping of a kvmesh pool in `pid`, its own pool's left out."""
    out = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            if POOL_NAME not in line:
                continue
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            inode = int(fields[4])
            if inode != own_inode:
                out.append((inode, end - start))
    return out


def own_pool_inode(pool_proc_path: str | None) -> int | None:
    """The inode of a peer's own pool, from the /proc/<pid>/fd/<n> path its status reports."""
    if not pool_proc_path:
        return None
    try:
        return os.stat(pool_proc_path).st_ino
    except OSError:
        return None


def read_process(pid: int, own_inode: int | None) -> ProcReading:
    rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    maps = pool_mappings(pid, own_inode)
    return ProcReading(rss, fds, len({inode for inode, _ in maps}), len(maps),
                       sum(size for _, size in maps))


@dataclass(frozen=True)
class ShmReading:
    used_bytes: int  # the whole of /dev/shm (shared with every other process on the host)
    kvmesh_files: int  # pool files of older releases (before memfd pools)


def read_shm() -> ShmReading:
    if not SHM_DIR.is_dir():
        return ShmReading(0, 0)
    files = sum(1 for p in SHM_DIR.iterdir() if p.name.startswith("kvmesh"))
    return ShmReading(shutil.disk_usage(SHM_DIR).used, files)
