"""vLLM's own prefix cache inside an engine process: whose reuse a request got, and a reset.

Runs inside the engine process (see `engine_proc`), which drives vLLM's v1
engine in single-process mode, so the scheduler is an attribute away.

- `ReuseWatch` records, for every request, vLLM's own split of the prompt's
  cached tokens: those found in vLLM's own prefix cache and those a KV
  connector (kvmesh, or another) supplied. vLLM computes this split at
  admission (`PrefillStats`) but hands `RequestOutput` only the sum.
- `reset_prefix_cache` empties vLLM's own prefix cache and nothing else (a
  connector's store keeps its chunks), as after an eviction or a restart of
  vLLM's cache. A connector that saves after the first token keeps the
  request's blocks until its saves are done, and vLLM refuses a reset while
  any block is held, so the engine is stepped until they are given back.
"""

from __future__ import annotations

import time

RESET_STEP_S = 0.005  # between idle engine steps while saves finish


class ReuseWatch:
    """Wraps the engine's output processor to keep each request's PrefillStats."""

    def __init__(self, llm) -> None:
        self.last: dict[str, int] = {}
        processor = llm.llm_engine.output_processor
        inner = processor.process_outputs

        def process_outputs(outputs, *args, **kwargs):
            for out in outputs:
                stats = getattr(out, "prefill_stats", None)
                if stats is not None:
                    self.last = {"prompt_tokens": stats.num_prompt_tokens,
                                 "vllm_cached_tokens": stats.num_local_cached_tokens,
                                 "connector_tokens": stats.num_external_cached_tokens}
            return inner(outputs, *args, **kwargs)

        processor.process_outputs = process_outputs

    def take(self) -> dict[str, int]:
        """The split of the last request that reached its first token ({} if none since)."""
        last, self.last = self.last, {}
        return last


def reset_prefix_cache(llm, timeout_s: float = 30.0) -> None:
    """Empty vLLM's own prefix cache (not the connector's). Raises TimeoutError
    if blocks are still held after `timeout_s`."""
    scheduler = _scheduler(llm)
    deadline = time.monotonic() + timeout_s
    while True:
        # Only try once nothing holds blocks: each refused reset logs a warning.
        if (scheduler is None or not scheduler.has_requests()) and llm.reset_prefix_cache():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"vLLM's prefix cache could not be reset within {timeout_s}s: "
                               "blocks are still held")
        llm.llm_engine.step()  # lets the connector report finished saves, freeing their blocks
        time.sleep(RESET_STEP_S)


def _scheduler(llm):
    core = getattr(getattr(llm.llm_engine, "engine_core", None), "engine_core", None)
    return getattr(core, "scheduler", None)
