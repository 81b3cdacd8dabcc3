import asyncio
import socket

import msgpack
import pytest

from kvmesh.config import KvmeshConfig, MeshConfig
from kvmesh.membership.discovery import (BEACON_MAGIC, MulticastBeacon, discover, resolve_seeds,
                                   system_resolve)
from kvmesh.types import PeerAddress

RECORDS = {"kvmesh-headless.ns.svc": ["10.1.0.5", "10.1.0.6", "fd00::7"],
           "seed.example": ["10.2.0.1", "10.2.0.2"]}


async def fake_resolve(name: str, port: int) -> list[str]:
    if name == "hang.example":
        await asyncio.sleep(3600)
    if name not in RECORDS:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return RECORDS[name]


def mesh(discovery: str, seeds: str) -> MeshConfig:
    return KvmeshConfig.from_env({"KVMESH_DISCOVERY": discovery, "KVMESH_SEEDS": seeds}).mesh


async def test_dns_returns_every_record_with_the_port():
    config = mesh("dns", "kvmesh-headless.ns.svc:7400")
    found = await discover(config, "10.1.0.6:7400", resolve=fake_resolve)
    assert found.seeds == ["10.1.0.5:7400", "[fd00::7]:7400"]  # not ourselves
    assert found.beacon is None


async def test_static_takes_one_address_per_seed_and_ip_literals_as_they_are():
    config = mesh("static", "seed.example:7400,10.3.0.1:7401,[fd00::9]:7402")
    found = await discover(config, "10.9.9.9:7400", resolve=fake_resolve)
    assert found.seeds == ["10.2.0.1:7400", "10.3.0.1:7401", "[fd00::9]:7402"]


async def test_unresolvable_and_hanging_names_are_skipped_within_the_timeout():
    seeds = [PeerAddress("nope.example", 1), PeerAddress("hang.example", 2),
             PeerAddress("seed.example", 3)]
    loop = asyncio.get_running_loop()
    start = loop.time()
    found = await resolve_seeds(seeds, timeout_s=0.2, all_records=True, resolve=fake_resolve)
    assert found == ["10.2.0.1:3", "10.2.0.2:3"]
    assert loop.time() - start < 1.0


async def test_system_resolver_reads_localhost():
    assert "127.0.0.1" in await asyncio.wait_for(system_resolve("localhost", 7400), 2.0)


async def start_beacon(announce: str, port: int, **kwargs) -> MulticastBeacon:
    beacon = MulticastBeacon(announce, port=port, interface="127.0.0.1", interval_s=0.05,
                             **kwargs)
    try:
        await beacon.start(timeout_s=1.0)
    except OSError as exc:
        pytest.skip(f"this host cannot join a multicast group on loopback: {exc}")
    return beacon


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_multicast_beacons_find_each_other_on_loopback():
    port = free_udp_port()
    heard = []
    a = await start_beacon("127.0.0.1:1111", port, on_heard=heard.append)
    b = await start_beacon("127.0.0.1:2222", port)
    other = await start_beacon("127.0.0.1:3333", port, cluster="another-mesh")
    try:
        async def both_heard():
            while not (a.heard() and b.heard()):
                await asyncio.sleep(0.02)

        try:
            await asyncio.wait_for(both_heard(), 2.0)
        except asyncio.TimeoutError:
            pytest.skip("the kernel does not loop multicast back on this host's loopback")
        await asyncio.sleep(0.2)  # more beacons: each address is reported once
        assert a.heard() == ["127.0.0.1:2222"] and heard == ["127.0.0.1:2222"]
        assert b.heard() == ["127.0.0.1:1111"]  # other clusters' beacons are ignored
        assert other.heard() == []

        junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        junk.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        for payload in (b"\xff\x00", msgpack.packb([1, BEACON_MAGIC, "", "no-port"]),
                        msgpack.packb([1, "other-magic", "", "127.0.0.1:4"])):
            junk.sendto(payload, (a.group, port))
        junk.close()
        await asyncio.sleep(0.1)
        assert a.malformed >= 3 and a.heard() == ["127.0.0.1:2222"]
    finally:
        for beacon in (a, b, other):
            await beacon.stop()


async def test_discover_by_multicast_returns_a_running_beacon():
    port = free_udp_port()
    elder = await start_beacon("127.0.0.1:1111", port)
    config = MeshConfig(discovery="multicast", seeds=(PeerAddress("239.255.74.74", port),))
    found = None
    try:
        try:
            found = await asyncio.wait_for(discover(config, "127.0.0.1:2222", listen_s=0.3),
                                           2.0)
        except OSError as exc:
            pytest.skip(f"no multicast on this host: {exc}")
        if not found.seeds:
            pytest.skip("the kernel does not loop multicast back on this host")
        assert found.seeds == ["127.0.0.1:1111"]
        assert found.beacon is not None
    finally:
        await elder.stop()
        if found is not None and found.beacon is not None:
            await found.beacon.stop()
