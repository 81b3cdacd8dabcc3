"""Physical baselines measured in the same run as the figure they judge."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import socket
import statistics
import time

import numpy as np


def memcpy_gbps(nbytes: int, reps: int = 5) -> float:
    src = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return nbytes / statistics.median(times) / 1e9


def _sink(port_q: mp.Queue, total: int, host: str) -> None:
    async def serve() -> None:
        done = asyncio.Event()

        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got = 0
            while got < total:
                data = await reader.read(1 << 20)
                if not data:
                    break
                got += len(data)
            writer.write(b"k")
            await writer.drain()
            writer.close()
            done.set()

        server = await asyncio.start_server(on_conn, host, 0)
        port_q.put(server.sockets[0].getsockname()[1])
        await asyncio.wait_for(done.wait(), 120)
        server.close()

    asyncio.run(serve())


def raw_socket_gbps(nbytes: int, host: str = "127.0.0.1") -> float:
    """One asyncio stream between two processes: bytes / seconds until acknowledged."""
    ctx = mp.get_context("spawn")
    port_q: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_sink, args=(port_q, nbytes, host), daemon=True)
    proc.start()
    port = port_q.get(timeout=60)
    payload = memoryview(bytes(4 << 20))

    async def send() -> float:
        reader, writer = await asyncio.open_connection(host, port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        sent = 0
        while sent < nbytes:
            part = payload[: min(len(payload), nbytes - sent)]
            writer.write(part)
            await writer.drain()
            sent += len(part)
        await asyncio.wait_for(reader.readexactly(1), 60)
        elapsed = time.perf_counter() - start
        writer.close()
        return elapsed

    elapsed = asyncio.run(send())
    proc.join(timeout=10)
    return nbytes / elapsed / 1e9
