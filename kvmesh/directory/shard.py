"""This peer's shard of the mesh directory: chunk key -> peers holding it.

Only keys whose ring owners include this peer land here. Bounded: past
`max_keys` the least recently advertised keys are dropped (a dropped entry
costs a future miss, never a wrong answer). Called on the peer's loop only.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable


class Directory:
    def __init__(self, max_keys: int = 1 << 22) -> None:
        self.max_keys = max_keys
        self._holders: OrderedDict[bytes, set[str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._holders)

    def add(self, holder: str, keys: Iterable[bytes]) -> None:
        for key in keys:
            holders = self._holders.get(key)
            if holders is None:
                holders = self._holders[key] = set()
                if len(self._holders) > self.max_keys:
                    self._holders.popitem(last=False)
            else:
                self._holders.move_to_end(key)
            holders.add(holder)

    def remove(self, holder: str, keys: Iterable[bytes]) -> None:
        for key in keys:
            holders = self._holders.get(key)
            if holders is not None:
                holders.discard(holder)
                if not holders:
                    del self._holders[key]

    def drop_holder(self, holder: str) -> int:
        """Forget every entry of a peer that left or died; returns how many."""
        dropped = 0
        for key in list(self._holders):
            holders = self._holders[key]
            if holder in holders:
                dropped += 1
                holders.discard(holder)
                if not holders:
                    del self._holders[key]
        return dropped

    def holders(self, key: bytes) -> tuple[str, ...]:
        return tuple(sorted(self._holders.get(key, ())))

    def keys(self) -> list[bytes]:
        return list(self._holders)

    def forget(self, keys: Iterable[bytes]) -> None:
        for key in keys:
            self._holders.pop(key, None)
