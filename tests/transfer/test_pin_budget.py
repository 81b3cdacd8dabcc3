"""PinBudget: its caps, and what waiting for a pin costs the holder."""

import asyncio
import time

from kvmesh.transfer.pin_budget import PinBudget


async def test_a_pin_waits_for_room_and_gives_up_at_its_deadline():
    budget = PinBudget(total=2, per_peer=1)
    assert budget.take("a") and not budget.take("a")
    waiting = asyncio.ensure_future(budget.take_within("a", 1.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    budget.give_back("a")
    assert await asyncio.wait_for(waiting, 1) and budget.held("a") == 1
    started = time.monotonic()
    assert not await budget.take_within("a", 0.1)
    assert 0.05 < time.monotonic() - started < 0.5


async def test_another_peers_pins_coming_back_wake_only_pins_that_can_be_taken():
    """A peer at its share with many pulls waiting (thousands: a connection
    may have 256 requests in flight, and there may be many connections)
    must not be woken by every other peer's pin coming back: before, each
    give_back woke every waiter on the holder's loop, so an attacker's
    parked pulls turned every honest chunk served into thousands of task
    wake-ups."""
    budget = PinBudget(total=10_000, per_peer=1)
    assert budget.take("hostile")
    parked = [asyncio.ensure_future(budget.take_within("hostile", 30.0)) for _ in range(5_000)]
    await asyncio.sleep(0)
    started = time.perf_counter()
    for _ in range(200):  # an honest peer's chunks, pinned and given back one by one
        assert await budget.take_within("honest", 1.0)
        budget.give_back("honest")
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - started
    budget.give_back("hostile")  # room for exactly one of the parked pulls
    await asyncio.sleep(0.05)
    assert sum(p.done() for p in parked) == 1 and budget.held("hostile") == 1
    for p in parked:
        p.cancel()
    await asyncio.gather(*parked, return_exceptions=True)
    assert elapsed < 1.0, f"200 honest pins took {elapsed:.2f}s with 5,000 pulls parked"


async def test_a_waiter_cancelled_as_it_is_woken_passes_the_pin_on():
    budget = PinBudget(total=10, per_peer=1)
    assert budget.take("a")
    first = asyncio.ensure_future(budget.take_within("a", 5.0))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(budget.take_within("a", 5.0))
    await asyncio.sleep(0)
    budget.give_back("a")  # wakes `first`...
    first.cancel()  # ...which is cancelled (its puller hung up) before it runs
    assert await asyncio.wait_for(second, 1.0)
