import pytest

from kvmesh.bench.lmcache_vllm import kv_transfer_args


def test_kv_transfer_args_point_at_the_server():
    assert kv_transfer_args("tcp://127.0.0.1:5555") == {
        "kv_connector": "LMCacheMPConnector", "kv_role": "kv_both",
        "kv_connector_extra_config": {"lmcache.mp.host": "tcp://127.0.0.1",
                                      "lmcache.mp.port": 5555}}


@pytest.mark.parametrize("url", ["127.0.0.1:5555", "ipc:///tmp/x", "tcp://127.0.0.1"])
def test_kv_transfer_args_want_tcp_host_and_port(url):
    with pytest.raises(ValueError):
        kv_transfer_args(url)
