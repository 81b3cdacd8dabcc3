"""`kvmesh bench netns`: pull throughput between two hosts made of network namespaces.

Two namespaces on one bridge (`scripts/netns-hosts`, needs root), so every
byte crosses a veth pair and a bridge as it would cross a LAN, with the
kernel's full TCP/IP path on both sides. For each transport, the peer on
host 1 stores `--mib` MiB in chunks of `--chunk-mib` and the peer on host 2
pulls all of it; printed beside two baselines between the same two
namespaces, measured in the same run: a raw TCP stream (blocking `sendall`
of the same bytes, acknowledged at the end, received into one reused
buffer), and the same stream received the way a verified pull must take it:
into distinct chunk-sized buffers, each hashed (xxh3_64) as it lands. The
second bounds any transfer that verifies what crosses the wire: where the
sender and the receiver have a core each (two namespaces on a two-core
machine), the receiver's extra pass over the bytes costs throughput. The
pull time covers lookup, pull, landing in store slots and the checksum of
every chunk; bytes are not compared here (tests/netns does that).

With `--tls`, two more rows in rounds of their own, beside the same two
baselines: kvmesh frames from host 1 to host 2 over TcpStream and over
TlsStream (mutual TLS 1.3), no peer (kvmesh/bench/tls_stream.py), and what
TLS costs the stream.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Iterator

from kvmesh.bench import tls_stream
from kvmesh.bench.hosts import Hosts, unavailable
from kvmesh.bench.procs import BenchPeer
from kvmesh.bench.report import Table
from kvmesh.transfer import ucx
from kvmesh.transfer.codec import PAYLOAD_PIECE_BYTES

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

# The verified floor's receiver: blocking reads of at most `piece` bytes
# (kvmesh.transfer.codec.PAYLOAD_PIECE_BYTES) into a pull's worth of distinct
# chunk-sized buffers (touched beforehand, as a warm store's slots are), each
# piece hashed right after it lands, one xxh3_64 per chunk.
_VERIFYING_SINK = """
import socket, sys, xxhash
total, chunk, piece = int(sys.argv[2]), int(sys.argv[4]), int(sys.argv[5])
dest = memoryview(bytearray(b"\\1") * total)
srv = socket.create_server((sys.argv[1], int(sys.argv[3])))
print("listening", flush=True)
conn, _ = srv.accept()
got = 0
while got < total:
    end, hasher = min(got + chunk, total), xxhash.xxh3_64()
    while got < end:
        view = dest[got:min(got + piece, end)]
        n = conn.recv_into(view, 0, socket.MSG_WAITALL)
        if not n:
            sys.exit("the sender closed early")
        hasher.update(view[:n])
        got += n
    hasher.intdigest()
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
    return _stream_gbps(hosts, total, _SINK)


def verified_stream_gbps(hosts: Hosts, total: int, chunk: int) -> float:
    """The same stream, received into distinct `chunk`-sized buffers and hashed as it lands."""
    return _stream_gbps(hosts, total, _VERIFYING_SINK, str(chunk), str(PAYLOAD_PIECE_BYTES))


def _stream_gbps(hosts: Hosts, total: int, sink_script: str, *sink_args: str) -> float:
    sink = subprocess.Popen(hosts.exec_argv(2) + [sys.executable, "-c", sink_script, hosts.ip(2),
                                                  str(total), str(RAW_PORT), *sink_args],
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
            env={"KVMESH_SECRET": "netns-bench-secret", **env, "KVMESH_HOST": hosts.ip(i)},
            text=True, bufsize=1)  # off loopback a peer starts only with the mesh secret
        self.peer_id = self._read(120)["peer_id"]


@contextlib.contextmanager
def pulling(hosts: Hosts, transport: str, total: int, chunk: int) -> Iterator[Callable[[], float]]:
    """A peer on host 1 holding `total` bytes and a joined peer on host 2;
    yields pull(), which has host 2 pull all of it once and returns GB/s.

    One pull is made first and not counted: it is the first touch of the
    puller's store slots (a page fault per 4 KiB), which a warm engine's
    store paid long ago, as the baselines' receive buffers have.
    """
    chunks = total // chunk
    env = {**os.environ, "KVMESH_TRANSPORT": transport, "KVMESH_CHUNK_TOKENS": "16",
           "KVMESH_CPU_BYTES": str(total + 4 * chunk), "KVMESH_TIMEOUT_S": "10",
           "KVMESH_CONTROL": "0", "KVMESH_PORT": str(PORT),
           "KVMESH_SEEDS": f"{hosts.ip(1)}:{PORT}"}
    holder = HostBenchPeer(hosts, 1, env, chunk)
    puller = HostBenchPeer(hosts, 2, env, chunk)

    def pull() -> float:
        puller.send("clear")
        got = puller.send("load", seed=1, chunks=chunks, verify=False, timeout=120)
        if got["ok"] != chunks:
            raise RuntimeError(f"{transport}: only {got['ok']} of {chunks} chunks arrived")
        return total / got["seconds"] / 1e9

    try:
        deadline = time.monotonic() + 30
        while len(puller.send("status")["members"]) < 2:
            if time.monotonic() > deadline:
                raise TimeoutError("the two hosts did not join")
            time.sleep(0.1)
        holder.send("fill", seed=1, chunks=chunks)
        time.sleep(0.3)  # advertisements land
        pull()
        yield pull
    finally:
        holder.stop()
        puller.stop()


def measure(hosts: Hosts, transports: list[str], total: int, chunk: int,
            reps: int) -> list[dict[str, float]]:
    """GB/s of each round: {transport: ...}, with "raw" and "verified" beside it.

    A round measures both streams and then one pull, back to back, so that a
    noisy neighbour slows all three alike and the round's ratios hold.
    """
    rounds: list[dict[str, float]] = []
    for transport in transports:
        with pulling(hosts, transport, total, chunk) as pull:
            for _ in range(reps):
                rounds.append({**_streams(hosts, total, chunk), transport: pull()})
    return rounds


def measure_tls(hosts: Hosts, total: int, chunk: int, reps: int) -> tuple[list[dict[str, float]], str]:
    """Rounds of both baselines, then TcpStream ("tcp-stream") and TlsStream
    ("tls-stream") frames host 1 -> host 2; and the TLS suite they used."""
    rounds, suite = [], ""
    for _ in range(reps):
        got, suite = tls_stream.rounds(total, chunk, 1, sides=(hosts.exec_argv(2), hosts.exec_argv(1)),
                                       host=hosts.ip(2))
        rounds.append({**_streams(hosts, total, chunk), "tcp-stream": got[0]["tcp"],
                       "tls-stream": got[0]["tls"]})
    return rounds, suite


def _streams(hosts: Hosts, total: int, chunk: int) -> dict[str, float]:
    return {"raw": raw_stream_gbps(hosts, total),
            "verified": verified_stream_gbps(hosts, total, chunk)}


def add_row(table: Table, name: str, rounds: list[dict[str, float]], key: str) -> None:
    """GB/s: the median over the rounds; ratios: the median of each round's own
    (against the baselines' medians in a round that has none)."""
    base = {b: statistics.median(r[b] for r in rounds if b in r) for b in ("raw", "verified")}
    mine = [r for r in rounds if key in r]
    table.add(name, statistics.median(r[key] for r in mine),
              *(statistics.median(r[key] / r.get(b, base[b]) for r in mine) for b in base))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvmesh bench netns", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--chunk-mib", type=float, default=2.0)
    # Each round is ~1 s; at 3 rounds the median ratio moved by up to 0.1 between runs.
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--transports", default="tcp" + (",ucx" if ucx.available() else ""))
    parser.add_argument("--tls", action="store_true",
                        help="also TcpStream vs TlsStream frames, host 1 -> host 2 (needs cryptography)")
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = parser.parse_args(argv)
    why = unavailable()
    if why is None and args.tls:
        why = tls_stream.unavailable()
    if why is not None:
        print(f"kvmesh bench netns: skipped: {why}")
        return 0
    total, chunk = args.mib << 20, int(args.chunk_mib * (1 << 20))
    table = Table("netns", ["path, host 1 -> host 2 (namespaces on a bridge)", "GB/s",
                            "vs raw stream", "vs verified stream"])
    transports = args.transports.split(",")
    hosts = Hosts(2)
    try:
        rounds = measure(hosts, transports, total, chunk, args.reps)
        tls_rounds, suite = measure_tls(hosts, total, chunk, args.reps) if args.tls else ([], "")
        rounds += tls_rounds
    finally:
        hosts.close()
    add_row(table, "raw TCP stream (blocking sendall)", rounds, "raw")
    add_row(table, f"raw TCP stream + xxh3_64 of each {chunk >> 10} KiB received", rounds,
            "verified")
    for transport in transports:
        add_row(table, f"kvmesh pull over {transport}", rounds, transport)
    if tls_rounds:
        add_row(table, "kvmesh frames over TcpStream, no peer", rounds, "tcp-stream")
        add_row(table, "kvmesh frames over TlsStream (mutual TLS 1.3), no peer", rounds, "tls-stream")
        ratio = statistics.median(r["tls-stream"] / r["tcp-stream"] for r in tls_rounds)
        table.note(f"TlsStream / TcpStream: {ratio:.2f} (median of {len(tls_rounds)} rounds' own "
                   f"ratios; {suite}; frames of {chunk >> 10} KiB, each payload hashed as it lands)")
    table.note(f"{args.mib} MiB in {chunk >> 10} KiB chunks, {args.reps} rounds per transport, "
               "each: both streams, then the pull; GB/s: median over the rounds, ratios: "
               "median of each round's own; veth pairs and a Linux bridge, one machine")
    table.note("raw TCP stream: received into one reused 4 MiB buffer, never read. "
               "+ xxh3_64: received as a pull lands it, into distinct chunk-sized buffers, "
               f"each hashed in reads of {PAYLOAD_PIECE_BYTES >> 10} KiB while still in cache: "
               "the floor of a verified transfer here, so the ceiling of kvmesh's pull")
    table.emit()
    if args.json:
        print(json.dumps(table.rows))
    return 0
