"""What mutual TLS costs a stream: the same frames through TcpStream and TlsStream.

Two processes, a sender and a receiver, speak kvmesh frames over one stream
of each kind: the sender writes `total` bytes as CHUNK frames of `frame`
bytes each; the receiver lands each payload in its own frame-sized slot of
one pool (touched beforehand, as a warm store's are), the decoder hashing
each piece as it lands as a pull does, then answers PONG. Time: the sender's,
from its first byte to the PONG, the handshake excluded. Rounds interleave
the two kinds so a noisy neighbour slows both alike. No peer, store or
lookup is involved: this is the stream's own cost, under the pull.

Certificates come from a throwaway CA (`kvmesh.bench.certs`) and reach both
processes as KVMESH_TLS_* variables, read by `kvmesh.config`.

`python -m kvmesh.bench.tls_stream {receive,send} ...` is one side; `rounds`
drives both, each optionally under an argv prefix (`ip netns exec ...`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import xxhash

from kvmesh.bench import certs
from kvmesh.config import KvmeshConfig
from kvmesh.transfer import frames as f
from kvmesh.transfer.connection import FramedConnection
from kvmesh.transfer.tls import client_context, open_stream, serve_accepted, server_context

KINDS = ("tcp", "tls")
KEY = bytes(16)
SIDE_TIMEOUT_S = 120


def unavailable() -> str | None:
    """Why the TLS rows cannot be measured here, or None."""
    return certs.available()


def rounds(total: int, frame: int, reps: int, sides: Sequence[Sequence[str]] = ((), ()),
           host: str = "127.0.0.1") -> tuple[list[dict[str, float]], str]:
    """GB/s of each round, {"tcp": ..., "tls": ...}, and the TLS suite used.
    `sides` prefix the receiver's and the sender's argv; the receiver listens on `host`."""
    with tempfile.TemporaryDirectory(prefix="kvmesh-tls-bench-") as tmp:
        ca = certs.MeshCa(Path(tmp), "bench CA")
        envs = (ca.issue("receiver").env(), ca.issue("sender").env())
        out, suite = [], ""
        for _ in range(reps):
            (tcp, _), (tls, suite) = (_one(kind, total, frame, sides, host, envs) for kind in KINDS)
            out.append({"tcp": tcp, "tls": tls})
        return out, suite


def _one(kind: str, total: int, frame: int, sides: Sequence[Sequence[str]], host: str,
         envs: tuple[dict[str, str], dict[str, str]]) -> tuple[float, str]:
    """(GB/s, TLS suite or "") of one transfer."""
    argv = [sys.executable, "-m", "kvmesh.bench.tls_stream"]
    common = ["--kind", kind, "--host", host, "--total", str(total), "--frame", str(frame)]
    receiver = subprocess.Popen([*sides[0], *argv, "receive", *common], stdout=subprocess.PIPE,
                                env={**os.environ, **envs[0]}, text=True)
    try:
        port = json.loads(receiver.stdout.readline())["port"]
        sent = subprocess.run([*sides[1], *argv, "send", *common, "--port", str(port)],
                              env={**os.environ, **envs[1]}, capture_output=True, text=True,
                              timeout=SIDE_TIMEOUT_S, check=True)
        if receiver.wait(SIDE_TIMEOUT_S) != 0:
            raise RuntimeError(f"{kind} receiver failed with {receiver.returncode}")
        report = json.loads(sent.stdout)
        return (total // frame) * frame / report["seconds"] / 1e9, report["cipher"]
    finally:
        receiver.kill()
        receiver.wait()


# ---- the two sides -------------------------------------------------------------------

async def _receive(args: argparse.Namespace) -> None:
    frames = args.total // args.frame
    pool = np.ones(frames * args.frame, dtype=np.uint8)  # touched: a warm store's slots
    slots = iter(range(frames))

    def sink(chunk: f.Chunk) -> memoryview:
        at = next(slots) * args.frame
        return memoryview(pool[at:at + chunk.length])

    listener = socket.create_server((args.host, 0))
    listener.setblocking(False)
    print(json.dumps({"port": listener.getsockname()[1]}), flush=True)
    conn, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(listener),
                                     SIDE_TIMEOUT_S)
    done = asyncio.get_running_loop().create_future()

    async def serve(stream) -> None:
        framed = FramedConnection(stream, sink=sink)
        for _ in range(frames):
            chunk = await framed.read_frame()
            if not isinstance(chunk, f.Chunk) or chunk.payload is None:
                raise RuntimeError(f"frame {chunk!r} did not land whole")
        await framed.send(f.Pong(0))
        done.set_result(None)

    await serve_accepted(conn, server_context(KvmeshConfig.from_env().tls if args.kind == "tls"
                                              else None), SIDE_TIMEOUT_S, serve)
    await asyncio.wait_for(done, 1)


async def _send(args: argparse.Namespace) -> None:
    payload = np.random.default_rng(0).integers(0, 256, args.frame, dtype=np.uint8)
    checksum = xxhash.xxh3_64_intdigest(payload)
    ctx = client_context(KvmeshConfig.from_env().tls) if args.kind == "tls" else None
    stream = await open_stream(args.host, args.port, ctx, SIDE_TIMEOUT_S)
    framed = FramedConnection(stream)
    start = time.perf_counter()
    for i in range(args.total // args.frame):
        await framed.send(f.Chunk(i, i, KEY, checksum, args.frame, payload))
    reply = await asyncio.wait_for(framed.read_frame(), SIDE_TIMEOUT_S)
    seconds = time.perf_counter() - start
    framed.close()
    if not isinstance(reply, f.Pong):
        raise RuntimeError(f"expected PONG, got {reply!r}")
    print(json.dumps({"seconds": seconds, "cipher": getattr(stream, "cipher", "")}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvmesh.bench.tls_stream")
    parser.add_argument("role", choices=("receive", "send"))
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--total", type=int, required=True)
    parser.add_argument("--frame", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(_receive(args) if args.role == "receive" else _send(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
