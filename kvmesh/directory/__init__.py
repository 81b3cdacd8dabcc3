"""The directory: which peers hold which chunk keys.

`shard.Directory` is one peer's share of it; `placement` says how many
owners each key has, `lookup_plan` which owners to ask, and `rebalance`
which keys move when the ring changes. All pure or loop-thread only.
"""
