"""Benchmarks; each prints its baseline measured in the same run."""
