"""This peer's shard of the mesh directory: chunk key -> peers holding it.

Only keys whose ring owners include this peer land here. Every table keyed
by what others send is bounded, so no member can flood it:

- at most `max_holders_per_key` holders a key (a puller tries a few at most);
  more advertisers of one key are refused, not allowed to push others out;
- at most `max_keys_per_holder` keys a holder: past that its new keys are
  refused (counted in `refused`), so one member fills at most its share;
- at most `max_keys` keys in all: past that the least recently advertised
  key is dropped (a dropped entry costs a future miss, never a wrong answer).

Holders of a key are kept as a sorted tuple: most keys have one or two, and
a tuple costs a fraction of a set (the shard's memory is mostly entries).
Called on the peer's loop only; `holders` is also read from engine threads,
one dict lookup, atomic under the GIL.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Iterable

from kvmesh.types import ChunkKey, PeerId

# An entry costs ~220 bytes of Python objects (the key, its holders, the
# ordered dict's node): these caps bound a shard at ~220 MiB, and what one
# holder can make it hold at ~55 MiB (512 GiB of 2 MiB chunks).
MAX_KEYS = 1 << 20
MAX_KEYS_PER_HOLDER = 1 << 18
MAX_HOLDERS_PER_KEY = 16


class Directory:
    def __init__(self, max_keys: int = MAX_KEYS, max_keys_per_holder: int = MAX_KEYS_PER_HOLDER,
                 max_holders_per_key: int = MAX_HOLDERS_PER_KEY) -> None:
        self.max_keys = max_keys
        self.max_keys_per_holder = max_keys_per_holder
        self.max_holders_per_key = max_holders_per_key
        self._holders: OrderedDict[ChunkKey, tuple[PeerId, ...]] = OrderedDict()
        self._per_holder: Counter[PeerId] = Counter()
        self.refused = 0  # entries refused by a cap

    def __len__(self) -> int:
        return len(self._holders)

    def keys_of(self, holder: PeerId) -> int:
        """How many entries name `holder`."""
        return self._per_holder.get(holder, 0)

    def add(self, holder: PeerId, keys: Iterable[ChunkKey]) -> None:
        for key in keys:
            holders = self._holders.get(key, ())
            if holder in holders:
                self._holders.move_to_end(key)
                continue
            if (len(holders) >= self.max_holders_per_key
                    or self._per_holder[holder] >= self.max_keys_per_holder):
                self.refused += 1
                continue
            self._holders[key] = tuple(sorted((*holders, holder)))
            self._holders.move_to_end(key)
            self._per_holder[holder] += 1
            if len(self._holders) > self.max_keys:
                self._evict_oldest()

    def remove(self, holder: PeerId, keys: Iterable[ChunkKey]) -> None:
        for key in keys:
            holders = self._holders.get(key)
            if holders is not None and holder in holders:
                self._set(key, tuple(h for h in holders if h != holder))
                self._uncount(holder)

    def drop_holder(self, holder: PeerId) -> int:
        """Forget every entry of a peer that left or died; returns how many."""
        if not self._per_holder.get(holder):
            return 0
        dropped = 0
        for key in [k for k, hs in self._holders.items() if holder in hs]:
            self._set(key, tuple(h for h in self._holders[key] if h != holder))
            dropped += 1
        self._per_holder.pop(holder, None)
        return dropped

    def holders(self, key: ChunkKey) -> tuple[PeerId, ...]:
        return self._holders.get(key, ())

    def keys(self) -> list[ChunkKey]:
        return list(self._holders)

    def forget(self, keys: Iterable[ChunkKey]) -> None:
        for key in keys:
            for holder in self._holders.pop(key, ()):
                self._uncount(holder)

    def _set(self, key: ChunkKey, holders: tuple[PeerId, ...]) -> None:
        if holders:
            self._holders[key] = holders
        else:
            del self._holders[key]

    def _evict_oldest(self) -> None:
        _, holders = self._holders.popitem(last=False)
        for holder in holders:
            self._uncount(holder)

    def _uncount(self, holder: PeerId) -> None:
        left = self._per_holder[holder] - 1
        if left > 0:
            self._per_holder[holder] = left
        else:
            del self._per_holder[holder]
