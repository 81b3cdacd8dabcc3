"""The `hosts` fixture: network namespaces for one test, always torn down."""

from __future__ import annotations

import pytest

from kvmesh.bench.hosts import Hosts, unavailable


@pytest.fixture(scope="session")
def netns_unavailable() -> str | None:
    return unavailable()


@pytest.fixture
def hosts(netns_unavailable):
    """make(n) -> Hosts with n namespaces; all deleted after the test, pass or fail."""
    if netns_unavailable is not None:
        pytest.skip(f"network namespaces unavailable: {netns_unavailable}")
    made: list[Hosts] = []

    def make(n: int) -> Hosts:
        made.append(Hosts(n))
        return made[-1]

    try:
        yield make
    finally:
        for h in made:
            h.close()
