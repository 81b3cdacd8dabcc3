"""The scheduler half of the vLLM connector: which chunks to load and save.

Runs in vLLM's engine-core process, on the scheduler's thread. It hashes each
prompt into chunk keys, asks the mesh (through a lookup client) how much of
the prompt beyond vLLM's own prefix cache it holds, and turns vLLM's block
allocations into per-step load and save plans for the worker half. It moves no
KV itself.

Hooks, in vLLM's order within one step:
    get_num_new_matched_tokens  may be called repeatedly for a request; only
                                refreshes cached per-request facts
    update_state_after_alloc    once or twice per admission; queues the load
    build_connector_meta        exactly once per step; drains the queued loads
                                and plans saves for newly completed chunks
    loads_finished              once per step (vLLM's update_connector_output):
                                notes requests whose load failed
    request_finished            exactly once per request, before its blocks
                                are freed
Policy: only prompt chunks are cached (generated tokens are not), and a chunk
is saved at most once per request, after every one of its tokens is computed.
A request whose load failed is not loaded from the mesh again: when every
loaded block failed, vLLM asks the connector again as for a new request, and
a chunk that fails the same way each time (a corrupt envelope, one too long
for our slots) would be pulled again and again instead of recomputed.
A prompt's last, partial chunk is cached too, cut down to whole blocks (its
"tail", a shorter chunk keyed like any other): without it an 8,160-token
prompt in chunks of 256 recomputes 224 tokens on every hit, with it one.

Prefill/decode hand-off (see `pd_proxy`): a request whose kv_transfer_params
hold {"kvmesh_role": "prefill"} finishes with {"kvmesh_chunks": n}, the number
of its prompt chunks that are saved or on their way. A decode request carrying
those params back is held (matched tokens None: "ask again") until the mesh
holds those n chunks or `handoff_wait_s` has passed, since the prefill's last
saves may still be in flight when its reply arrives.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvmesh.connectors.vllm.metadata import SKIP_BLOCK, ChunkSpec, RequestPlan, StepPlan
from kvmesh.connectors.vllm.peer_factory import LookupClient
from kvmesh.errors import KvmeshError
from kvmesh.hashring.keys import ChunkHasher, KeyNamespace
from kvmesh.types import ChunkKey

if TYPE_CHECKING:
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.request import Request

logger = logging.getLogger(__name__)

# kv_transfer_params keys of the prefill/decode hand-off.
ROLE_PARAM = "kvmesh_role"
CHUNKS_PARAM = "kvmesh_chunks"
# While a decode request waits for its prefill's chunks, look up at most this often.
HANDOFF_POLL_S = 0.01


@dataclass(slots=True)
class _RequestState:
    keys: list[ChunkKey]  # the prompt's chunk keys; the last is the tail's if tail_tokens
    tail_tokens: int = 0  # tokens of the tail chunk, a multiple of the block size
    block_ids: list[int] = field(default_factory=list)
    # vLLM's own computed tokens at the last lookup (block aligned).
    local_tokens: int = 0
    # [lo, hi): chunks loaded from the mesh, hence never saved back.
    mesh_chunks: tuple[int, int] = (0, 0)
    # First chunk not yet considered for saving.
    next_save: int = 0
    # Live blocks of the load in flight, and whether a load of this request failed.
    load_blocks: set[int] = field(default_factory=set)
    load_failed: bool = False
    # True once any save was planned: the worker then reports this request in
    # finished_sending, and its blocks must outlive request_finished until then.
    had_saves: bool = False
    # Hand-off wait: give up at `wait_until`; do not look up again before `next_lookup`.
    wait_until: float | None = None
    next_lookup: float = 0.0


class MeshScheduler:
    """Plans kvmesh loads and saves for one vLLM scheduler.

    `lookup` is None when this engine does not load (kv_producer) or when the
    lookup client could not be opened; then no tokens are ever matched.
    """

    def __init__(self, namespace: KeyNamespace, block_size: int, lookup: LookupClient | None,
                 saves: bool, handoff_wait_s: float = 0.0, clock=time.monotonic) -> None:
        self._namespace = namespace
        self._handoff_wait_s = handoff_wait_s
        self._clock = clock
        self._chunk_tokens = namespace.chunk_tokens
        self._block_size = block_size
        self._blocks_per_chunk = namespace.chunk_tokens // block_size
        self._lookup = lookup
        self._saves = saves
        self._requests: dict[str, _RequestState] = {}
        self._pending_loads: dict[str, list[ChunkSpec]] = {}

    # -- vLLM hooks ---------------------------------------------------------

    def get_num_new_matched_tokens(self, request: "Request",
                                   num_computed_tokens: int) -> tuple[int | None, bool]:
        """Tokens beyond `num_computed_tokens` the mesh can supply, loaded asynchronously.

        Counts whole chunks from the chunk holding token `num_computed_tokens`,
        capped at `request.num_tokens - 1` so vLLM computes at least one token
        (when the whole prompt hits, every chunk is still loaded whole and vLLM
        recomputes only the last token). Blocks on one bounded lookup. None
        while a decode request waits for its prefill's chunks.
        """
        state = self._state_for(request)
        first = num_computed_tokens // self._chunk_tokens
        state.local_tokens = num_computed_tokens
        if self._lookup is None or state.load_failed or first >= len(state.keys):
            return 0, False
        if self._clock() < state.next_lookup:
            return None, False
        hits = self._lookup_prefix(state.keys[first:])
        if self._awaits_handoff(request, state, first + hits):
            state.next_lookup = self._clock() + HANDOFF_POLL_S
            return None, False
        end = min(self._chunk_end(state, first + hits - 1) if hits else 0,
                  request.num_tokens - 1)
        matched = end - num_computed_tokens
        return (matched, True) if matched > 0 else (0, False)

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks",
                                 num_external_tokens: int) -> None:
        """Queue the load of `num_external_tokens` into the blocks just allocated."""
        state = self._requests.get(request.request_id)
        if state is None or num_external_tokens <= 0:
            return
        block_ids = list(blocks.get_block_ids()[0])
        start = state.local_tokens
        end = start + num_external_tokens
        first, stop = start // self._chunk_tokens, -(-end // self._chunk_tokens)
        loads = [self._load_spec(state, i, block_ids, start, end) for i in range(first, stop)]
        self._pending_loads[request.request_id] = loads
        state.mesh_chunks = (first, stop)
        state.load_blocks = {b for spec in loads for b in spec.live_block_ids()}

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> StepPlan:
        """This step's plans: queued loads, and saves of chunks completed by this step."""
        plans = {req_id: RequestPlan(req_id, loads=loads)
                 for req_id, loads in self._pending_loads.items()}
        self._pending_loads.clear()
        for req_id, computed in self._scheduled_requests(scheduler_output):
            saves = self._plan_saves(req_id, computed)
            if saves:
                plans.setdefault(req_id, RequestPlan(req_id)).saves = saves
        preempted = sorted(scheduler_output.preempted_req_ids or ())
        idle = scheduler_output.total_num_scheduled_tokens == 0
        return StepPlan(requests=list(plans.values()), preempted_req_ids=preempted, idle=idle)

    def loads_finished(self, req_ids: set[str], invalid_block_ids: set[int]) -> None:
        """The worker's report of one step: requests whose loads ended, and
        the blocks that failed to load. A request whose load lost any block
        is marked, so that it is never loaded from the mesh again."""
        for req_id in req_ids:
            state = self._requests.get(req_id)
            if state is None:
                continue
            if state.load_blocks & invalid_block_ids:
                state.load_failed = True
                logger.info("kvmesh: request %s failed to load from the mesh; it is recomputed "
                            "and not loaded again", req_id)
            state.load_blocks = set()

    def request_finished(self, request: "Request",
                         block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        """(True while the worker may still read this request's blocks for a save,
        the hand-off params of a prefill request or None).

        The worker reports every request that ever had a planned save in
        finished_sending once those saves are done, so the first answer is
        simply whether any save was planned.
        """
        state = self._requests.pop(request.request_id, None)
        self._pending_loads.pop(request.request_id, None)
        if state is None:
            return False, None
        prefill = _params(request).get(ROLE_PARAM) == "prefill"
        return state.had_saves, ({CHUNKS_PARAM: state.next_save} if prefill else None)

    def shutdown(self) -> None:
        close = getattr(self._lookup, "close", None)
        if callable(close):
            close()

    # -- helpers ------------------------------------------------------------

    def _state_for(self, request: "Request") -> _RequestState:
        state = self._requests.get(request.request_id)
        if state is None:
            state = self._prompt_state(request)
            self._requests[request.request_id] = state
        return state

    def _prompt_state(self, request: "Request") -> _RequestState:
        tokens = request.prompt_token_ids
        if not tokens:
            return _RequestState(keys=[])
        salt = getattr(request, "cache_salt", None) or ""
        namespace = self._namespace.with_salt(salt) if salt else self._namespace
        hasher = ChunkHasher(namespace)
        return _RequestState(keys=hasher.keys(tokens, tail_multiple=self._block_size),
                             tail_tokens=hasher.tail_tokens(len(tokens), self._block_size))

    def _chunk_end(self, state: _RequestState, chunk: int) -> int:
        """The token after chunk `chunk`: a whole chunk on, or the tail's end."""
        if state.tail_tokens and chunk == len(state.keys) - 1:
            return chunk * self._chunk_tokens + state.tail_tokens
        return (chunk + 1) * self._chunk_tokens

    def _chunk_blocks(self, state: _RequestState, chunk: int) -> int:
        return -(-(self._chunk_end(state, chunk) - chunk * self._chunk_tokens) // self._block_size)

    def _awaits_handoff(self, request: "Request", state: _RequestState, held: int) -> bool:
        """True while fewer than the chunks a prefill announced are held, until the wait ends."""
        announced = _params(request).get(CHUNKS_PARAM)
        if not isinstance(announced, int) or held >= min(announced, len(state.keys)):
            return False
        now = self._clock()
        if state.wait_until is None:
            state.wait_until = now + self._handoff_wait_s
        if now < state.wait_until:
            return True
        logger.warning("kvmesh: request %s gave up waiting for %d announced chunks (%d held); "
                       "do prefill and decode engines share a namespace?",
                       request.request_id, announced, held)
        return False

    def _lookup_prefix(self, keys: list[ChunkKey]) -> int:
        try:
            hits = self._lookup.lookup_prefix(keys)
        except KvmeshError as exc:
            logger.warning("kvmesh lookup failed, treating as a miss: %s", exc)
            return 0
        return max(0, min(int(hits), len(keys)))

    def _load_spec(self, state: _RequestState, chunk: int, block_ids: list[int],
                   start: int, end: int) -> ChunkSpec:
        """Chunk `chunk`'s blocks, skipping those outside tokens [start, end)."""
        lo_block, hi_block = start // self._block_size, -(-end // self._block_size)
        first = chunk * self._blocks_per_chunk
        ids = [block_ids[b] if lo_block <= b < min(hi_block, len(block_ids)) else SKIP_BLOCK
               for b in range(first, first + self._chunk_blocks(state, chunk))]
        return ChunkSpec(state.keys[chunk], ids)

    def _scheduled_requests(self, scheduler_output: "SchedulerOutput"):
        """(req_id, tokens computed once this step runs) of every scheduled request.

        Also keeps each request's block table in step with vLLM's.
        """
        counts = scheduler_output.num_scheduled_tokens
        for new in scheduler_output.scheduled_new_reqs:
            state = self._requests.get(new.req_id)
            if state is not None:
                state.block_ids = list(new.block_ids[0])
            yield new.req_id, new.num_computed_tokens + counts.get(new.req_id, 0)
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            state = self._requests.get(req_id)
            new_ids = cached.new_block_ids[i]
            if state is not None and new_ids is not None:
                if req_id in cached.resumed_req_ids:
                    state.block_ids = list(new_ids[0])
                else:
                    state.block_ids.extend(new_ids[0])
            yield req_id, cached.num_computed_tokens[i] + counts.get(req_id, 0)

    def _plan_saves(self, req_id: str, computed: int) -> list[ChunkSpec]:
        state = self._requests.get(req_id)
        if not self._saves or state is None:
            return []
        done = state.next_save
        while done < len(state.keys) and self._chunk_end(state, done) <= computed:
            done += 1
        lo, hi = state.mesh_chunks
        bpc = self._blocks_per_chunk
        saves = []
        for chunk in range(state.next_save, done):
            blocks = self._chunk_blocks(state, chunk)
            ids = state.block_ids[chunk * bpc:chunk * bpc + blocks]
            if lo <= chunk < hi or len(ids) < blocks:
                continue
            saves.append(ChunkSpec(state.keys[chunk], ids))
        state.next_save = max(state.next_save, done)
        state.had_saves |= bool(saves)
        return saves


def _params(request: "Request") -> dict:
    params = getattr(request, "kv_transfer_params", None)
    return params if isinstance(params, dict) else {}
