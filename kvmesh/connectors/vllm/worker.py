"""The worker half of the vLLM connector: chunks in and out of paged KV.

Runs in each vLLM worker process, on the model runner's thread; the copies run
on two small thread pools so that neither a load nor a save holds up a
forward pass. Hooks, in vLLM's order within one step:

    handle_preemptions   before the forward; waits (bounded) for saves still
                         reading blocks that vLLM is about to reuse
    start_load_kv        after the forward (async loads); starts the loads
    wait_for_save        after the forward; queues saves of the chunks the
                         forward just completed
    get_finished         polls: loads whose chunks are all scattered or
                         failed, and finished requests whose saves are done;
                         on a step that computes nothing, first waits up to
                         IDLE_LOAD_WAIT_S for a load to end
    get_block_ids_with_load_errors
                         blocks of failed chunks since the last call

Every wait is bounded. A failed chunk is a cache miss: its blocks, and every
block after it in the request (a prefix must be contiguous), are reported so
that vLLM recomputes them. A saved chunk is committed only if the whole gather
succeeded, so the mesh never holds a partial chunk.

A little over 300 lines: the hooks above share the worker's in-flight
tables (loads, saves, error blocks) and their locks; split apart they would
each reach into the others' state.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import torch

from kvmesh.config import KvmeshConfig
from kvmesh.connectors.vllm import peer_factory
from kvmesh.connectors.vllm.metadata import ChunkSpec, StepPlan
from kvmesh.connectors.vllm.namespace import layout_tag
from kvmesh.connectors.vllm.slot_codec import SlotCodec
from kvmesh.errors import ConfigError, KvmeshError
from kvmesh.hashring.keys import KeyNamespace
from kvmesh.kernels.layouts import detect_layout
from kvmesh.kernels.paged import PagedKV, readonly_bytes
from kvmesh.peers.api import LoadJob, PeerApi

logger = logging.getLogger(__name__)

# A load job spans several network round trips (find a holder, pull, maybe a
# second holder); the peer bounds each by `transfer.timeout_s`.
LOAD_DEADLINE_TIMEOUTS = 5
# How long get_finished may wait for a finished request's last saves, so that
# its blocks are released in this step rather than at the next one.
FINISH_WAIT_S = 1.0
# How long handle_preemptions may wait for saves still reading preempted blocks.
PREEMPT_WAIT_S = 10.0
LOAD_THREADS = 4  # mostly waiting on the network
# An idle step (no token to compute) waits up to this long for a load to end;
# a request that arrives meanwhile starts at most this much later.
IDLE_LOAD_WAIT_S = 0.01


@dataclass(slots=True)
class _Load:
    job: LoadJob | None  # None when the load could not even start
    future: Future  # resolves to the block ids to recompute
    specs: list[ChunkSpec]

    def failed_blocks(self) -> set[int]:
        """Call once `future` is done; a crashed task fails every block."""
        exc = self.future.exception()
        if exc is not None:
            logger.error("kvmesh: load task crashed", exc_info=exc)
            return _blocks_from(self.specs, 0)
        return self.future.result()


class MeshWorker:
    """Moves chunks between one worker's paged KV and its embedded peer."""

    def __init__(self, config: KvmeshConfig, engine_id: str, block_size: int) -> None:
        self._config = config
        self._engine_id = engine_id
        self._block_size = block_size
        self._blocks_per_chunk = config.chunk_tokens // block_size
        self._load_deadline_s = LOAD_DEADLINE_TIMEOUTS * config.transfer.timeout_s
        self._peer: PeerApi | None = None
        self._paged: PagedKV | None = None
        self._slots: SlotCodec | None = None
        self._load_pool = ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix="kvmesh-load")
        self._save_pool = ThreadPoolExecutor(1, thread_name_prefix="kvmesh-save")
        self._loads: dict[str, _Load] = {}
        self._idle_step = False  # this step computes nothing (see get_finished)
        self._saves: dict[str, list[Future]] = {}
        self._save_reqs: set[str] = set()  # had a planned save; not yet reported
        self._finished: set[str] = set()  # finished by vLLM, awaiting their saves
        self._failed_blocks: set[int] = set()

    @property
    def peer(self) -> PeerApi | None:
        return self._peer

    # -- vLLM hooks ---------------------------------------------------------

    def register_kv_caches(self, layers: list[torch.Tensor], namespace: KeyNamespace) -> None:
        """Check the layout of `layers` (in layer order), then open the peer. Called once."""
        layout = detect_layout(layers, block_size=self._block_size,
                               num_kv_heads=namespace.num_kv_heads, head_size=namespace.head_dim)
        if layout_tag(layout.name, self._block_size) != namespace.kv_layout:
            raise ConfigError(f"kvmesh: the KV cache has layout {layout.name!r} but keys "
                              f"are hashed for {namespace.kv_layout!r}")
        self._paged = PagedKV(layers, layout)
        self._slots = SlotCodec(namespace, self._paged.chunk_bytes, self._blocks_per_chunk,
                                self._config.codecs.cpu)
        slot_bytes = self._slots.slot_bytes  # a full chunk, raw or as its longest envelope
        self._peer = peer_factory.open_peer(self._config, namespace, slot_bytes, self._engine_id)
        if self._peer.slot_bytes < slot_bytes:
            raise ConfigError(f"kvmesh: peer slots of {self._peer.slot_bytes} bytes cannot "
                              f"hold a {slot_bytes}-byte chunk")

    def handle_preemptions(self, metadata: StepPlan) -> None:
        """Before vLLM reuses preempted requests' blocks: let their saves finish reading."""
        futures = [f for r in metadata.preempted_req_ids for f in self._saves.get(r, ())]
        if futures:
            _, late = wait(futures, timeout=PREEMPT_WAIT_S)
            if late:
                logger.error("kvmesh: %d saves still reading blocks of preempted requests",
                             len(late))

    def start_load_kv(self, metadata: StepPlan) -> None:
        """Start this step's loads; returns at once. Chunks are scattered on a pool thread."""
        self.handle_preemptions(metadata)  # no-forward steps get no handle_preemptions call
        self._idle_step = metadata.idle
        deadline = time.monotonic() + self._load_deadline_s
        for plan in metadata.requests:
            if plan.loads:
                self._loads[plan.req_id] = self._start_load(plan.loads, deadline)

    def wait_for_save(self, metadata: StepPlan) -> None:
        """Queue saves of the chunks this step completed; returns at once."""
        for plan in metadata.requests:
            if plan.saves:
                self._save_reqs.add(plan.req_id)
                future = self._save_pool.submit(self._save, plan.saves)
                self._saves.setdefault(plan.req_id, []).append(future)

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str], set[str]]:
        """(requests whose saves are done, requests whose loads are done).

        A request is in the first set only if vLLM has reported it finished
        (here or earlier) and it ever had a planned save.
        """
        for req_id in finished_req_ids & self._loads.keys():
            job = self._loads[req_id].job
            if job is not None:
                job.cancel()  # aborted while loading: stop pulling
        if self._idle_step and self._loads:
            # Nothing to compute: wait a little for a load instead of returning
            # at once. An engine stepping in a tight loop holds the GIL, and the
            # load threads wait up to a switch interval (5 ms) for it after every
            # copy: that made an 8k-token load take ~0.5 s instead of ~10 ms.
            wait([load.future for load in self._loads.values()], timeout=IDLE_LOAD_WAIT_S,
                 return_when=FIRST_COMPLETED)
        done_recving = {r for r, load in self._loads.items() if load.future.done()}
        for req_id in done_recving:
            self._failed_blocks |= self._loads.pop(req_id).failed_blocks()
        self._finished |= finished_req_ids & self._save_reqs
        self._prune_saves()
        waiting = [f for r in self._finished for f in self._saves.get(r, ())]
        if waiting:
            wait(waiting, timeout=FINISH_WAIT_S)
            self._prune_saves()
        done_sending = {r for r in self._finished if r not in self._saves}
        self._finished -= done_sending
        self._save_reqs -= done_sending
        return done_sending, done_recving

    def get_block_ids_with_load_errors(self) -> set[int]:
        """Blocks of chunks that failed to load since the last call."""
        failed, self._failed_blocks = self._failed_blocks, set()
        return failed

    def shutdown(self) -> None:
        """Stop loads, let queued saves drain (each is bounded), close the peer."""
        for load in self._loads.values():
            if load.job is not None:
                load.job.cancel()
        self._load_pool.shutdown(wait=True, cancel_futures=True)
        self._save_pool.shutdown(wait=True)
        close = getattr(self._peer, "close", None)
        if callable(close):
            close()

    # -- loads ----------------------------------------------------------------

    def _start_load(self, specs: list[ChunkSpec], deadline: float) -> _Load:
        reader = _InPlaceReader(self._scatter_or_miss, specs)
        try:
            job = self._peer.start_load([s.key for s in specs], reader)
        except KvmeshError as exc:
            logger.warning("kvmesh: load could not start, recomputing: %s", exc)
            failed: Future = Future()
            failed.set_result(_blocks_from(specs, 0))
            return _Load(None, failed, specs)
        return _Load(job, self._load_pool.submit(self._run_load, job, specs, deadline, reader),
                     specs)

    def _run_load(self, job: LoadJob, specs: list[ChunkSpec], deadline: float,
                  reader: "_InPlaceReader") -> set[int]:
        """Scatter each chunk as it lands; return the block ids that must be recomputed."""
        landed: set[int] = set()
        try:
            for result in job.results(max(0.0, deadline - time.monotonic())):
                try:
                    if result.consumed:  # the reader scattered it already
                        landed.add(result.index)
                    elif result.data is not None and self._scatter_or_miss(result.data, specs,
                                                                            result.index):
                        landed.add(result.index)
                finally:
                    result.release()
        finally:
            # Before vLLM hears of any failed block (and recomputes into it),
            # no late read may still write there.
            reader.close()
        first_missing = next((i for i in range(len(specs)) if i not in landed), len(specs))
        return _blocks_from(specs, first_missing)

    def _scatter_or_miss(self, data: torch.Tensor | memoryview, specs: list[ChunkSpec],
                         index: int) -> bool:
        """Scatter chunk `index` from a landed slot's tensor or a holder's
        read-only bytes, decoded first if it is an envelope; False (logged)
        when it cannot be: a miss."""
        try:
            chunk = data if isinstance(data, torch.Tensor) else readonly_bytes(data)
            self._scatter(self._slots.raw_chunk(chunk), specs[index])
            return True
        except KvmeshError as exc:
            logger.warning("kvmesh: chunk %d could not be scattered: %s", index, exc)
            return False

    def _scatter(self, data: torch.Tensor, spec: ChunkSpec) -> None:
        """Write one landed chunk into its live blocks (a head or tail may be
        skipped). A prompt's tail chunk has fewer blocks than the others."""
        lo, hi = spec.live_range()
        blocks = len(spec.block_ids)
        # offset/chunk_blocks cut the slab per the layout (K then V blocks in
        # token-major layouts), which a plain [layers, blocks, -1] view would
        # not. The slab must be exactly `blocks` blocks: a chunk of another
        # size under this key is not this chunk (scatter raises KernelError).
        self._paged.scatter(data, spec.block_ids[lo:hi], offset=lo, chunk_blocks=blocks)

    # -- saves ----------------------------------------------------------------

    def _save(self, specs: list[ChunkSpec]) -> None:
        """Gather each chunk into a fresh slot (encoded, with a CPU codec) and
        commit it; a None ticket is skipped."""
        for spec in specs:
            try:
                ticket = self._peer.prepare_save(spec.key)
            except KvmeshError as exc:
                logger.warning("kvmesh: save not prepared: %s", exc)
                continue
            if ticket is None:
                continue
            ok, length = False, 0
            try:
                length = self._slots.save_into(
                    ticket.data, len(spec.block_ids),
                    lambda out, ids=spec.block_ids: self._paged.gather(ids, out))
                ok = True
            except KvmeshError as exc:  # a bad block id, or KV the codec refuses (inf/NaN)
                logger.warning("kvmesh: chunk not saved: %s", exc)
            finally:
                self._peer.commit_save(ticket, ok, length)

    def _prune_saves(self) -> None:
        for req_id in list(self._saves):
            pending = [f for f in self._saves[req_id] if not f.done()]
            if pending:
                self._saves[req_id] = pending
            else:
                del self._saves[req_id]


class _InPlaceReader:
    """One load's reader (see PeerApi.start_load): scatters a same-host
    holder's chunk straight from its shared pool, one copy instead of a copy
    into a local slot and a scatter out of it. Runs on the peer's copy threads.

    A load can end (its deadline, a cancel) while the copy threads still
    have its chunks queued. `close` waits out the scatters in progress (the
    copy threads run them in parallel, for different chunks) and refuses
    every later one, so nothing writes into blocks once they are reported.
    """

    def __init__(self, scatter_or_miss, specs: list[ChunkSpec]) -> None:
        self._scatter_or_miss = scatter_or_miss
        self._specs = specs
        self._changed = threading.Condition()
        self._open = True
        self._scattering = 0

    def __call__(self, index: int, data: memoryview) -> bool:
        with self._changed:
            if not self._open:
                return False
            self._scattering += 1
        try:
            return self._scatter_or_miss(data, self._specs, index)
        finally:
            with self._changed:
                self._scattering -= 1
                self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._open = False
            self._changed.wait_for(lambda: self._scattering == 0)


def _blocks_from(specs: list[ChunkSpec], first: int) -> set[int]:
    """Live block ids of chunks `first` and after."""
    return {b for spec in specs[first:] for b in spec.live_block_ids()}

