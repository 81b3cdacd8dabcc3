"""What the backend reports to SGLang's storage metrics, and its own counters.

`take()` returns SGLang's `StorageMetrics` (pages and GB/s per batch since
the last call, then cleared), which SGLang polls when it was started with
storage metrics on. `counters` are cumulative totals for logs and tests.
Thread-safe: SGLang's prefetch and backup threads call the backend at once.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass


@dataclass
class Counters:
    exists_calls: int = 0
    pages_found: int = 0  # leading hits reported by batch_exists
    pages_loaded: int = 0
    pages_missed: int = 0  # asked for by a get but not loaded
    pages_saved: int = 0  # committed here, or already held in the mesh
    pages_not_saved: int = 0


class BackendMetrics:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.counters = Counters()
        self._lock = threading.Lock()
        self._batches = {"prefetch_pgs": [], "prefetch_bandwidth": [], "backup_pgs": [],
                         "backup_bandwidth": []}

    def note_exists(self, found: int) -> None:
        with self._lock:
            self.counters.exists_calls += 1
            self.counters.pages_found += found

    def note_load(self, loaded: int, missed: int, nbytes: int, seconds: float) -> None:
        with self._lock:
            self.counters.pages_loaded += loaded
            self.counters.pages_missed += missed
            self._note_batch("prefetch", loaded, nbytes, seconds)

    def note_save(self, saved: int, failed: int, nbytes: int, seconds: float) -> None:
        with self._lock:
            self.counters.pages_saved += saved
            self.counters.pages_not_saved += failed
            self._note_batch("backup", saved, nbytes, seconds)

    def _note_batch(self, kind: str, pages: int, nbytes: int, seconds: float) -> None:
        if self.enabled and pages:
            self._batches[f"{kind}_pgs"].append(pages)
            self._batches[f"{kind}_bandwidth"].append(nbytes / max(seconds, 1e-9) / 1e9)

    def as_dict(self) -> dict:
        with self._lock:
            return asdict(self.counters)

    def take(self):
        """SGLang's StorageMetrics for the batches since the last call; None if off."""
        if not self.enabled:
            return None
        from sglang.srt.observability.metrics_collector import StorageMetrics  # noqa: PLC0415

        metrics = StorageMetrics()
        with self._lock:
            for name, values in self._batches.items():
                getattr(metrics, name).extend(values)
                values.clear()
        return metrics
