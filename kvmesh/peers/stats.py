"""Counters a peer keeps for status, metrics and inspect. Loop thread only."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field


@dataclass
class PeerStats:
    lookups: int = 0
    lookup_chunks: int = 0
    lookup_hit_chunks: int = 0
    local_hits: int = 0
    remote_hits: int = 0
    read_in_place: int = 0  # remote hits read out of a same-host holder's pool, not stored
    load_failures: int = 0
    bytes_pulled: int = 0
    bytes_served: int = 0
    chunks_saved: int = 0
    pulls_inflight: int = 0
    accept_errors: int = 0  # accept() failed (EMFILE, ENOMEM, ...): see inbound
    connections_refused: int = 0  # inbound connections closed at once, past a cap
    idle_closed: int = 0  # inbound connections closed after the idle timeout
    send_timeouts: int = 0  # inbound connections closed: a frame could not be written in time
    recent_failures: deque = field(default_factory=lambda: deque(maxlen=20))
    wire_bytes_saved: dict = field(default_factory=dict)  # per codec: raw bytes streams did not send

    def note_failure(self, what: str) -> None:
        self.recent_failures.append((time.time(), what))

    def wire_saved(self, codec: str, n: int) -> None:
        self.wire_bytes_saved[codec] = self.wire_bytes_saved.get(codec, 0) + n

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "recent_failures"}
        out["wire_bytes_saved"] = dict(self.wire_bytes_saved)
        out["recent_failures"] = [{"at": t, "what": w} for t, w in self.recent_failures]
        return out
