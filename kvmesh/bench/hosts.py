"""Hosts made of network namespaces, through `scripts/netns-hosts` (benchmarks and tests).

Only one set of hosts exists per machine at a time (namespace names and the
10.77.0.0/24 subnet are fixed), so `Hosts` holds an exclusive lock on
`LOCK` from `up` to `close`; a second user waits for it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "netns-hosts"
LOCK = Path("/tmp/kvmesh-netns.lock")
LOCK_WAIT_S = 300
SUBNET = "10.77.0"


def unavailable() -> str | None:
    """Why hosts cannot be made here, or None."""
    if not SCRIPT.exists():
        return f"{SCRIPT} is missing (run from a kvmesh checkout)"
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian: apt-get install -y iptables iproute2)"
    check = subprocess.run([str(SCRIPT), "check"], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        return check.stderr.strip() or "scripts/netns-hosts check failed"
    return None


class Hosts:
    """`n` hosts at 10.77.0.1..n, up until `close()`; each method is one script call."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._lock = open(LOCK, "w")  # noqa: SIM115 - held until close()
        try:
            self._acquire()
            self._run("up", str(n))
        except BaseException:
            self.close()
            raise

    def ip(self, i: int) -> str:
        return f"{SUBNET}.{i}"

    def exec_argv(self, i: int) -> list[str]:
        """Prefix that runs a command inside host i."""
        return ["ip", "netns", "exec", f"{os.environ.get('KVMESH_NETNS_PREFIX', 'kvm')}-h{i}"]

    def loss(self, i: int, pct: float) -> None:
        self._run("loss", str(i), str(pct))

    def rate(self, i: int, mbit: int) -> None:
        """Limit what host i sends to `mbit` megabit/s (0: no limit)."""
        self._run("rate", str(i), str(mbit))

    def partition(self, a: list[int], b: list[int]) -> None:
        self._run("partition", ",".join(map(str, a)), ",".join(map(str, b)))

    def isolate(self, i: int) -> None:
        self._run("isolate", str(i))

    def heal(self) -> None:
        self._run("heal")

    def close(self) -> None:
        """Delete every host (and end what still runs in them); idempotent."""
        if self._lock.closed:
            return
        try:
            self._run("down")
        finally:
            self._lock.close()

    def _acquire(self) -> None:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another netns run held {LOCK} for {LOCK_WAIT_S}s") from None
                time.sleep(0.5)

    def _run(self, *args: str) -> None:
        subprocess.run([str(SCRIPT), *args], check=True, capture_output=True, timeout=60)
