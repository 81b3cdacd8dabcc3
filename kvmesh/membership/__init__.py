"""Who is in the mesh: SWIM gossip membership, its datagram transport and
seal, discovery of first members, and a simulated network for tests.

`swim.Swim` is the front; the module docstring there lists its parts.
"""
