"""What the scheduler half tells the worker half each step.

Plain dataclasses of bytes, ints, strings and lists: vLLM's default
multiprocess mode pickles them from the engine-core process to every worker.
This module does not import vLLM; `connector.KVMeshMetadata` is `StepPlan`
under vLLM's metadata base class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmesh.types import ChunkKey

# In `ChunkSpec.block_ids`: a block of the chunk that this transfer leaves alone
# (it belongs to vLLM's own prefix cache, or was not allocated).
SKIP_BLOCK = -1


@dataclass(slots=True)
class ChunkSpec:
    """One chunk and the paged-KV blocks that hold it, one id per block of the chunk.

    Loads may carry `SKIP_BLOCK` at the head or tail (never in the middle);
    saves never do.
    """

    key: ChunkKey
    block_ids: list[int]

    def live_range(self) -> tuple[int, int]:
        """[lo, hi): the positions of the blocks this transfer touches."""
        live = [i for i, b in enumerate(self.block_ids) if b != SKIP_BLOCK]
        return (live[0], live[-1] + 1) if live else (0, 0)

    def live_block_ids(self) -> list[int]:
        return [b for b in self.block_ids if b != SKIP_BLOCK]


@dataclass(slots=True)
class RequestPlan:
    """This step's transfers for one request: loads in prefix order, saves in any order."""

    req_id: str
    loads: list[ChunkSpec] = field(default_factory=list)
    saves: list[ChunkSpec] = field(default_factory=list)


@dataclass
class StepPlan:
    """Every transfer of one engine step."""

    requests: list[RequestPlan] = field(default_factory=list)
    # Requests preempted this step: their blocks are freed and will be reused.
    preempted_req_ids: list[str] = field(default_factory=list)
    # This step computes no token: the engine is only waiting (e.g. for loads).
    idle: bool = False
