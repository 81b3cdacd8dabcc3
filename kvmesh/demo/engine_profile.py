"""What an engine process reports about its own costs, for the benchmarks.

Runs inside the engine process (see `engine_proc`, command "profile"):
- CPU time of the whole process (`time.process_time_ns`, which keeps the time
  of threads that have ended), and per thread role (the engine's main thread,
  kvmesh's threads by name, all other threads) the scheduler's counters from
  /proc/self/task/<tid>/schedstat (Linux only): time on a CPU, time runnable
  without one, timeslices. A thread that has ended drops out of its role, so
  roles are meant for long-lived threads: kvmesh's peer loop and copy pools.
- The kvmesh connector's step-path hook times (`hook_times`), scheduler and
  worker halves summed. In vLLM's single-process mode both halves live in
  this process; with multiprocessing the worker half is elsewhere and only
  the scheduler half is seen.
"""

from __future__ import annotations

import os
import threading
import time

from kvmesh.connectors.vllm.hook_times import merge

# Thread-name prefixes of kvmesh's threads.
KVMESH_ROLES = ("kvmesh-peer", "kvmesh-save", "kvmesh-load", "kvmesh-lookup")
# The thread that drives the engine (vLLM's steps, in single-process mode) and
# every other thread that is not kvmesh's (OpenMP workers, gloo, ...).
MAIN, OTHER = "main", "other"


def role_of(thread_name: str) -> str:
    """'kvmesh-save' for 'kvmesh-save_0' and the like; 'other' for a non-kvmesh thread."""
    return next((r for r in KVMESH_ROLES if thread_name.startswith(r)), OTHER)


def task_schedstats() -> dict[int, tuple[int, int, int]]:
    """{tid: (ns on a CPU, ns runnable but without a CPU, timeslices)} of this
    process's live threads."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                run, wait, slices = (int(x) for x in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended since the listing
        out[int(tid)] = (run, wait, slices)
    return out


def thread_times() -> dict[str, int]:
    """A flat dict of counters, so that two readings subtract key by key:
    "process" (CPU ns of the whole process so far) and, for each role with a
    live thread, "<role>.run" (ns on a CPU), "<role>.wait" (ns runnable
    without a CPU: other load, or kvmesh threads queued behind the engine) and
    "<role>.slices" (times put on a CPU: one per wake-up or preemption)."""
    total = time.process_time_ns()
    main = threading.main_thread().native_id
    roles = {t.native_id: role_of(t.name) for t in threading.enumerate() if t.native_id}
    out: dict[str, int] = {"process": total}
    for tid, counters in task_schedstats().items():
        role = MAIN if tid == main else roles.get(tid, OTHER)
        for name, value in zip(("run", "wait", "slices"), counters):
            out[f"{role}.{name}"] = out.get(f"{role}.{name}", 0) + value
    return out


def connector_hook_times(llm) -> dict[str, dict[str, int]]:
    """Summed hook times of the kvmesh connectors `llm` uses in this process ({} if none)."""
    return merge(*(c.hook_times.snapshot() for c in _connectors(llm)
                   if hasattr(c, "hook_times")))


def profile(llm) -> dict:
    return {"threads": thread_times(), "hooks": connector_hook_times(llm)}


def _connectors(llm) -> list:
    """The scheduler's connector and this process's worker connector, where they exist."""
    from vllm.distributed.kv_transfer import get_kv_transfer_group, has_kv_transfer_group  # noqa: PLC0415

    found = []
    core = getattr(getattr(llm.llm_engine, "engine_core", None), "engine_core", None)
    scheduler = getattr(core, "scheduler", None)
    if scheduler is not None and scheduler.get_kv_connector() is not None:
        found.append(scheduler.get_kv_connector())
    if has_kv_transfer_group():
        found.append(get_kv_transfer_group())
    return found
