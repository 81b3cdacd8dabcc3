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
