"""UCX transport through `ucxx` (the `ucx` extra).

Frames travel as tagged messages in order per endpoint: the 16-byte prefix,
the header, then the payload, each its own message, so the receiver's
decoder (in message-framed mode) asks for exactly one message at a time and
payloads land straight in their destination buffer (CUDA memory included,
where UCX was built with it).

ucxx sets several UCX variables at import unless they are already set; we set
the ones that matter for throughput first, and import it only when a UCX
transport is actually requested (never at kvmesh import time).

Idle cost. By default ucxx completes an awaited request by yielding to the
event loop until it is done (`wait_yield`, an `asyncio.sleep(0)` loop). A
peer's server always has a receive posted for the next frame, so an idle UCX
peer spun its loop thread at a full core. With `UCXPY_ENABLE_PYTHON_FUTURE=1`
ucxx's notifier thread completes requests as asyncio futures instead: an idle
peer measured 3% of a core, and the pull's throughput did not change (0.94
against 0.87 GB/s over loopback, same run). That thread is not a daemon and
only ends when told to, so we tell it to before Python joins its threads at
exit.
"""

from __future__ import annotations

import os
import threading
from typing import Awaitable, Callable, Sequence

from kvmesh.transfer.codec import PREFIX_BYTES
from kvmesh.transfer.streams import StreamClosed

_UCX_DEFAULTS = {
    "UCX_MAX_RNDV_RAILS": "2",         # ucxx's default of 1 halves TCP throughput
    "UCX_RNDV_SCHEME": "put_zcopy",
    "UCX_TCP_SNDBUF": "4M",
    "UCX_TCP_RXBUF": "4M",
    "UCX_WARN_UNUSED_ENV_VARS": "n",
    "UCXPY_ENABLE_PYTHON_FUTURE": "1",  # no busy wait on requests (module docstring)
}


_exit_hooked = False


def available() -> bool:
    try:
        _import_ucxx()
        return True
    except Exception:  # ImportError, or libucx failing to load
        return False


def _import_ucxx():
    global _exit_hooked
    for name, value in _UCX_DEFAULTS.items():
        os.environ.setdefault(name, value)
    import ucxx  # noqa: PLC0415 - deliberately lazy, see module docstring

    if not _exit_hooked:
        # Run before the interpreter joins non-daemon threads (an atexit
        # handler runs after, too late: exit would wait on the notifier forever).
        threading._register_atexit(ucxx.stop_notifier_thread)
        _exit_hooked = True
    return ucxx


class UcxStream:
    kind = "ucx"
    remote = ""  # ucxx does not tell the other end's address: per-address caps do not apply

    def __init__(self, endpoint) -> None:
        self._ep = endpoint
        self._ucxx = _import_ucxx()

    @classmethod
    async def connect(cls, host: str, port: int) -> "UcxStream":
        ucxx = _import_ucxx()
        return cls(await ucxx.create_endpoint(host, port))

    async def recv_into(self, buf: memoryview) -> int:
        try:
            await self._ep.recv(buf)
        except self._ucxx.exceptions.UCXError as exc:
            raise StreamClosed(f"ucx: {exc}") from None
        return len(buf)

    async def send(self, parts: Sequence[bytes | memoryview]) -> None:
        head = memoryview(parts[0])
        try:
            await self._ep.send(head[:PREFIX_BYTES])
            await self._ep.send(head[PREFIX_BYTES:])
            for part in parts[1:]:
                await self._ep.send(part)
        except self._ucxx.exceptions.UCXError as exc:
            raise StreamClosed(f"ucx: {exc}") from None

    def close(self) -> None:
        try:
            self._ep.abort()
        except Exception:  # already closed or torn down by UCX
            pass


class UcxListener:
    """Accepts UCX endpoints and hands each, as a stream, to `serve`."""

    def __init__(self, serve: Callable[[UcxStream], Awaitable[None]], port: int = 0) -> None:
        ucxx = _import_ucxx()

        async def on_endpoint(ep) -> None:
            await serve(UcxStream(ep))

        self._listener = ucxx.create_listener(on_endpoint, port or None)
        self.port: int = self._listener.port

    def close(self) -> None:
        self._listener.close()

