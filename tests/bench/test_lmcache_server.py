from pathlib import Path

import pytest

from kvmesh.bench.lmcache_server import l1_gb_for, pool_path, server_command, stored_chunks


def test_server_command_passes_shm_name_and_ports():
    cmd = server_command(Path("/v/bin/python"), port=5001, http_port=5002, prometheus_port=5003,
                         shm_name="bench-1", l1_gb=2)
    assert cmd[:4] == ["/v/bin/python", "-m", "lmcache.cli.main", "server"]
    flags = dict(zip(cmd[4::2], cmd[5::2]))
    assert flags == {"--host": "127.0.0.1", "--port": "5001", "--http-host": "127.0.0.1",
                     "--http-port": "5002", "--prometheus-port": "5003", "--chunk-size": "256",
                     "--l1-size-gb": "2", "--eviction-policy": "LRU",
                     "--supported-transfer-mode": "auto", "--shm-name": "bench-1"}


@pytest.mark.parametrize("nbytes, gb", [(1, 1), (256 << 20, 1), (512 << 20, 1),
                                        ((512 << 20) + 1, 2), (3 << 30, 6)])
def test_l1_pool_holds_twice_the_bytes(nbytes, gb):
    assert l1_gb_for(nbytes) == gb


def test_stored_chunks_sums_l1_pools():
    status = {"storage_manager": {"l1_managers": {"_default": {"total_object_count": 31},
                                                  "other": {"total_object_count": 2}}}}
    assert stored_chunks(status) == 33
    assert stored_chunks({}) == 0


def test_pool_path_uses_the_servers_prefix_once():
    assert pool_path("x") == Path("/dev/shm/lmcache_l1_pool_x")
    assert pool_path("lmcache_l1_pool_x") == Path("/dev/shm/lmcache_l1_pool_x")
