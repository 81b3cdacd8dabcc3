import pytest

from kvmesh.bench.lmcache_transfer import LMCacheSkipped, _checked

MIB = 1 << 20


def result(**over):
    got = {"stored": True, "intact": True, "hit_chunks": [4, 4], "chunks": 4, "bytes": 8 * MIB,
           "store_s": 0.08, "pull_s": [0.01, 0.03], "retrieve_s": [0.008, 0.008]}
    return {**got, **over}


def test_rates_are_bytes_over_median_times():
    got = _checked(result(), 8 * MIB, 2 * MIB)
    assert got.pull_gbps == pytest.approx(8 * MIB / 0.02 / 1e9)
    assert got.retrieve_gbps == pytest.approx(8 * MIB / 0.008 / 1e9)
    assert got.store_gbps == pytest.approx(8 * MIB / 0.08 / 1e9)
    assert (got.chunk, got.pulls) == (2 * MIB, 2)
    assert "median of 2 pulls" in got.note()


@pytest.mark.parametrize("over", [{"stored": False}, {"intact": False}, {"hit_chunks": [4, 3]},
                                  {"bytes": 4 * MIB}])
def test_wrong_or_partial_pulls_do_not_count(over):
    with pytest.raises(LMCacheSkipped):
        _checked(result(**over), 8 * MIB, 2 * MIB)
