"""Pull internals that a pull's safety rests on."""

import asyncio

import pytest

from kvmesh.transfer.pull_receiver import _drain


async def test_drain_waits_for_copies_through_a_cancellation():
    # Shared-memory copies write into store slots; the pull frees the slots of
    # unfinished chunks right after _drain, so a cancel must not cut it short.
    loop = asyncio.get_running_loop()
    copy = loop.create_future()
    copies = {copy}
    drained = asyncio.ensure_future(_drain(copies))
    await asyncio.sleep(0)
    drained.cancel()
    await asyncio.sleep(0.05)
    assert not drained.done()  # still waiting for the copy
    copy.set_result([True])
    with pytest.raises(asyncio.CancelledError):
        await drained


async def test_drain_returns_once_every_copy_has_ended():
    loop = asyncio.get_running_loop()
    ended, running = loop.create_future(), loop.create_future()
    ended.set_result([True])
    drained = asyncio.ensure_future(_drain({ended, running}))
    await asyncio.sleep(0.05)
    assert not drained.done()  # one copy is still running
    running.set_result([True])
    await asyncio.wait_for(drained, 1)
    assert drained.done() and drained.exception() is None
    assert await asyncio.wait_for(_drain(set()), 1) is None  # nothing in flight: no wait


class _StuckConnection:
    """A FramedConnection to a holder that stopped reading: sends never end."""

    closed = False

    class stream:
        kind = "tcp"

    def __init__(self) -> None:
        self.sends = 0

    def set_sink(self, sink) -> None:
        pass

    async def read_frame(self):
        await asyncio.Event().wait()

    async def send(self, frame) -> None:
        self.sends += 1
        await asyncio.Event().wait()

    def close(self) -> None:
        self.closed = True


async def test_lease_ids_from_a_holder_that_stops_reading_pile_up_nowhere():
    """Each refs frame names a lease to RELEASE; a hostile holder can send
    frames with fresh lease ids and never read. One sender, a bounded backlog."""
    from kvmesh.transfer.client import MAX_PENDING_RELEASES, PeerClient, RemoteInfo

    conn = _StuckConnection()
    client = PeerClient(conn, RemoteInfo("h:1", 3, "", 0, 0, b""), max_inflight=4)
    before = len(asyncio.all_tasks())
    for lease in range(10 * MAX_PENDING_RELEASES):
        client._release_soon(lease, timeout_s=60.0)
    await asyncio.sleep(0.05)
    assert len(asyncio.all_tasks()) - before == 1  # one sender, stuck on its first RELEASE
    assert conn.sends == 1
    assert len(client._to_release) < MAX_PENDING_RELEASES
    client.close()


async def test_copied_leases_go_back_at_once_only_while_the_holder_has_chunks_to_answer():
    """A holder over its pin budget waits for RELEASEs before it answers the
    rest; once every chunk is answered, RELEASEs wait for the pull's end
    (sent mid-pull, they took loop time from the copies still landing)."""
    from kvmesh.transfer.pull_receiver import PullState
    from kvmesh.transfer.pull_states import ChunkState, PullTable

    released: list[int] = []
    state = PullState((b"a", b"b"), None, lambda *a: None, PullTable(2),
                      asyncio.get_running_loop().create_future(), release=released.append)
    state.leases[1] = 1
    state.table.move(0, ChunkState.COPYING)  # chunk 1 is still unanswered
    state.copied(1, 1)
    assert released == [1]
    state.leases[2] = 1
    state.table.move(1, ChunkState.COPYING)  # now every chunk is answered
    state.copied(2, 1)
    assert released == [1]  # held for the pull's end
    state.release_copied()
    assert released == [1, 2]
