"""kvmesh: a peer-to-peer KV-cache mesh for LLM inference engines.

Every engine process embeds a peer; peers advertise the chunk keys they hold on
a consistent-hash ring and pull missing KV chunks straight from each other.
"""

__version__ = "0.1.0"
