"""Cumulative time the connector's hooks take on vLLM's step path.

Every hook that vLLM calls from its step (scheduler side: lookups, allocation,
planning, finishing; worker side: per step and per layer) is wrapped by
`timed`, which adds the call's wall time and a call count to the connector's
`HookTimes`. Whatever those hooks do inline (a lookup round trip, a bounded
wait for a finished request's saves) holds up the step by exactly that much;
work handed to kvmesh's own threads is not counted here.

Always on: one timed call costs about 0.5 us on the project's 2-core
machines (two `perf_counter_ns` reads, a wrapper call and two adds), against
engine steps of milliseconds; that cost is inside the figures it produces.
"""

from __future__ import annotations

import functools
from time import perf_counter_ns

# Hooks on the step path, by the side that calls them; register_kv_caches and
# shutdown run once per engine and are not timed.
SCHEDULER_HOOKS = ("get_num_new_matched_tokens", "update_state_after_alloc",
                   "build_connector_meta", "update_connector_output", "request_finished")
WORKER_HOOKS = ("handle_preemptions", "start_load_kv", "wait_for_layer_load", "save_kv_layer",
                "wait_for_save", "get_finished", "get_block_ids_with_load_errors")
HOOKS = SCHEDULER_HOOKS + WORKER_HOOKS


class HookTimes:
    """Calls and nanoseconds per hook, for one connector instance.

    `add` runs on the engine thread that calls the hooks (one thread per
    connector instance); `snapshot` may be called from any thread and returns
    a copy, possibly one call behind.
    """

    __slots__ = ("_calls", "_ns")

    def __init__(self) -> None:
        self._calls = dict.fromkeys(HOOKS, 0)
        self._ns = dict.fromkeys(HOOKS, 0)

    def add(self, hook: str, ns: int) -> None:
        self._calls[hook] += 1
        self._ns[hook] += ns

    def snapshot(self) -> dict[str, dict[str, int]]:
        """{hook: {"calls": n, "ns": total}} for every hook called at least once."""
        return {hook: {"calls": calls, "ns": self._ns[hook]}
                for hook, calls in list(self._calls.items()) if calls}


def timed(method):
    """Wrap a connector hook so its time lands in `self.hook_times`, also when it raises."""
    hook = method.__name__
    if hook not in HOOKS:
        raise ValueError(f"{hook} is not a step-path hook; add it to HOOKS first")

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        start = perf_counter_ns()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.hook_times.add(hook, perf_counter_ns() - start)

    return wrapper


def merge(*snapshots: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Sum snapshots (e.g. the scheduler's and the worker's connector of one engine)."""
    out: dict[str, dict[str, int]] = {}
    for snap in snapshots:
        for hook, entry in snap.items():
            into = out.setdefault(hook, {"calls": 0, "ns": 0})
            into["calls"] += entry["calls"]
            into["ns"] += entry["ns"]
    return out


def diff(after: dict[str, dict[str, int]],
         before: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """What happened between two snapshots of the same counters."""
    zero = {"calls": 0, "ns": 0}
    out = {hook: {k: entry[k] - before.get(hook, zero)[k] for k in ("calls", "ns")}
           for hook, entry in after.items()}
    return {hook: entry for hook, entry in out.items() if entry["calls"]}
