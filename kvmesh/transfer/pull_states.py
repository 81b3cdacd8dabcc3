"""The lifecycle of each chunk of a pull, as a transition table.

    WAITING --sink gave a buffer--> LANDING --frame complete--> LANDED --> DONE
    WAITING --CHUNK without a buffer (dropped)--> LANDED --> DONE
    WAITING --CHUNK_REF(S)--> COPYING --copy ended--> DONE
    any state --MISS, failure, timeout--> DONE

LANDED means the bytes are in (verified or not) and the report waits for the
next batch (see `pull_receiver.REPORT_BATCH_BYTES`); DONE means `done` was called,
exactly once. A frame that would move a chunk any other way (a second CHUNK
for one index, a CHUNK_REF for a chunk already landing) is ignored by the
receiver before it gets here: the holder may be hostile, but an illegal move
asked of the table is a bug of ours and raises.
"""

from __future__ import annotations

import enum


class ChunkState(enum.Enum):
    WAITING = "waiting"  # asked for; nothing has arrived
    LANDING = "landing"  # its payload is streaming into the buffer the sink gave
    LANDED = "landed"  # arrived over a stream; its report is pending
    COPYING = "copying"  # handed to a copy thread (shared pool)
    DONE = "done"  # reported to `done`; terminal


_W, _LG, _LD, _C, _D = (ChunkState.WAITING, ChunkState.LANDING, ChunkState.LANDED,
                        ChunkState.COPYING, ChunkState.DONE)

TRANSITIONS: dict[ChunkState, frozenset[ChunkState]] = {
    _W: frozenset({_LG, _LD, _C, _D}),
    _LG: frozenset({_LD, _D}),
    _LD: frozenset({_D}),
    _C: frozenset({_D}),
    _D: frozenset(),
}


class IllegalPullTransition(RuntimeError):
    """A bug: the client asked the table for a move the lifecycle forbids."""


class PullTable:
    """Per-chunk states of one pull. Loop thread only."""

    __slots__ = ("_states", "_open", "_waiting")

    def __init__(self, chunks: int) -> None:
        self._states = [_W] * chunks
        self._open = chunks  # chunks not yet DONE
        self._waiting = chunks  # chunks the holder has not answered yet

    def __getitem__(self, index: int) -> ChunkState:
        return self._states[index]

    def __len__(self) -> int:
        return len(self._states)

    @property
    def open(self) -> int:
        """Chunks not yet DONE."""
        return self._open

    @property
    def waiting(self) -> int:
        """Chunks still WAITING: the holder has answered them neither way."""
        return self._waiting

    def move(self, index: int, new: ChunkState) -> None:
        old = self._states[index]
        if new not in TRANSITIONS[old]:
            raise IllegalPullTransition(f"chunk {index}: {old.value} -> {new.value}")
        self._states[index] = new
        if old is _W:
            self._waiting -= 1
        if new is _D:
            self._open -= 1

    def not_done(self) -> list[int]:
        return [i for i, s in enumerate(self._states) if s is not _D]
