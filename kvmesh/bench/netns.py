"""`kvmesh bench netns`: pull throughput between two hosts made of network namespaces.

Two namespaces on one bridge (`scripts/netns-hosts`, needs root), so every
byte crosses a veth pair and a bridge as it would cross a LAN, with the
kernel's full TCP/IP path on both sides. For each transport, the peer on
host 1 stores `--mib` MiB in chunks of `--chunk-mib` and the peer on host 2
pulls all of it; printed beside a raw TCP stream (blocking `sendall` of the
same bytes, acknowledged at the end) between the same two namespaces,
measured in the same run. The pull time covers lookup, pull, landing in
store slots and the checksum of every chunk; bytes are not compared here
(tests/netns does that).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from kvmesh.bench.hosts import Hosts, unavailable
from kvmesh.bench.procs import BenchPeer
from kvmesh.bench.report import Table
from kvmesh.transfer import ucx

PORT = 7400
RAW_PORT = 7401

_SINK = """
import socket, sys
total = int(sys.argv[2])
srv = socket.create_server((sys.argv[1], int(sys.argv[3])))
print("listening", flush=True)
conn, _ = srv.accept()
buf, got = bytearray(4 << 20), 0
while got < total:
    n = conn.recv_into(buf)
    if not n:
        break
    got += n
conn.sendall(b"k")
conn.close()
"""

_SEND = """
import socket, sys, time
host, total, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
payload = memoryview(bytes(4 << 20))
s = socket.create_connection((host, port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
start, sent = time.perf_counter(), 0
while sent < total:
    part = payload[: min(len(payload), total - sent)]
    s.sendall(part)
    sent += len(part)
s.recv(1)
print(time.perf_counter() - start)
"""


def raw_stream_gbps(hosts: Hosts, total: int) -> float:
    """One TCP stream from host 1 to host 2 (as pulled bytes flow): bytes / seconds until acked."""
    sink = subprocess.Popen(hosts.exec_argv(2) + [sys.executable, "-c", _SINK, hosts.ip(2),
                                                  str(total), str(RAW_PORT)],
                            stdout=subprocess.PIPE, text=True)
    try:
        sink.stdout.readline()  # listening
        out = subprocess.run(hosts.exec_argv(1) + [sys.executable, "-c", _SEND, hosts.ip(2),
                                                   str(total), str(RAW_PORT)],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        return total / float(out) / 1e9
    finally:
        sink.kill()
        sink.wait()


class HostBenchPeer(BenchPeer):
    """A benchmark peer inside one host."""

    def __init__(self, hosts: Hosts, i: int, env: dict[str, str], slot_bytes: int) -> None:
        self.proc = subprocess.Popen(
            hosts.exec_argv(i) + [sys.executable, "-m", "kvmesh.cli", "peer",
                                  "--slot-bytes", str(slot_bytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**env, "KVMESH_HOST": hosts.ip(i)}, text=True, bufsize=1)
        self.peer_id = self._read(120)["peer_id"]


def measure(hosts: Hosts, transport: str, total: int, chunk: int, reps: int) -> float:
    chunks = total // chunk
    env = {**os.environ, "KVMESH_TRANSPORT": transport, "KVMESH_CHUNK_TOKENS": "16",
           "KVMESH_CPU_BYTES": str(total + 4 * chunk), "KVMESH_TIMEOUT_S": "10",
           "KVMESH_CONTROL": "0", "KVMESH_PORT": str(PORT),
           "KVMESH_SEEDS": f"{hosts.ip(1)}:{PORT}"}
    holder = HostBenchPeer(hosts, 1, env, chunk)
    puller = HostBenchPeer(hosts, 2, env, chunk)
    try:
        deadline = time.monotonic() + 30
        while len(puller.send("status")["members"]) < 2:
            if time.monotonic() > deadline:
                raise TimeoutError("the two hosts did not join")
            time.sleep(0.1)
        holder.send("fill", seed=1, chunks=chunks)
        time.sleep(0.3)  # advertisements land
        rates = []
        for _ in range(reps):
            puller.send("clear")
            got = puller.send("load", seed=1, chunks=chunks, verify=False, timeout=120)
            if got["ok"] != chunks:
                raise RuntimeError(f"{transport}: only {got['ok']} of {chunks} chunks arrived")
            rates.append(total / got["seconds"] / 1e9)
        return statistics.median(rates)
    finally:
        holder.stop()
        puller.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvmesh bench netns", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--chunk-mib", type=float, default=2.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--transports", default="tcp" + (",ucx" if ucx.available() else ""))
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = parser.parse_args(argv)
    why = unavailable()
    if why is not None:
        print(f"kvmesh bench netns: skipped: {why}")
        return 0
    total, chunk = args.mib << 20, int(args.chunk_mib * (1 << 20))
    table = Table("netns", ["path, host 1 -> host 2 (namespaces on a bridge)", "GB/s",
                            "vs raw stream"])
    hosts = Hosts(2)
    try:
        raw = statistics.median(raw_stream_gbps(hosts, total) for _ in range(args.reps))
        table.add("raw TCP stream (blocking sendall)", raw, 1.0)
        for transport in args.transports.split(","):
            rate = measure(hosts, transport, total, chunk, args.reps)
            table.add(f"kvmesh pull over {transport}", rate, rate / raw)
    finally:
        hosts.close()
    table.note(f"{args.mib} MiB in {chunk >> 10} KiB chunks, median of {args.reps}; "
               "veth pairs and a Linux bridge, one machine")
    table.emit()
    if args.json:
        print(json.dumps(table.rows))
    return 0
