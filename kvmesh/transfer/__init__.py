"""The wire: a sans-IO frame codec and the transports that carry it."""
