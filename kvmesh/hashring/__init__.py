"""Chunk keys and the consistent-hash ring: pure code, no I/O."""
