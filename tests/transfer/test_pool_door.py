"""The pool door: a same-host pool handed over as a read-only descriptor, to a token holder only."""

from __future__ import annotations

import os
import stat

import pytest

from kvmesh.errors import ConfigError, TransferError
from kvmesh.store.slab_pool import SlabPool
from kvmesh.transfer.pool_door import (MAX_UNIX_PATH, TOKEN_BYTES, PoolDoor, door_path, knock,
                                       private_dir)


@pytest.fixture
def pool():
    p = SlabPool(slot_bytes=4096, cap_bytes=4 * 4096)
    p.view(1)[:5] = b"hello"
    yield p
    p.close()


@pytest.fixture
async def door(tmp_path, pool):
    run_dir = private_dir(tmp_path / "run")
    d = PoolDoor(door_path(run_dir, "127.0.0.1:7400"), lambda: (pool.share_fd(), pool.size), 2.0)
    await d.open()
    yield d
    await d.close()


async def test_a_token_holder_gets_the_pool_read_only_and_proves_the_connection(door, pool):
    proven = []
    token = door.issue(lambda: proven.append(True))
    mapping = await knock(door.path, token, 2.0)
    try:
        assert len(mapping) == pool.size and mapping[4096:4101] == b"hello"
        with pytest.raises(TypeError):
            mapping[0] = 1  # read-only
        assert proven == [True] and door.granted == 1
    finally:
        mapping.close()


async def test_a_wrong_or_revoked_token_gets_nothing(door):
    token = door.issue(lambda: None)
    forged = token[:8] + bytes(TOKEN_BYTES - 8)  # the right id, the wrong key
    with pytest.raises(TransferError):
        await knock(door.path, forged, 2.0)
    door.revoke(token)
    with pytest.raises(TransferError):
        await knock(door.path, token, 2.0)
    assert door.granted == 0 and door.refused == 2


async def test_a_socket_that_is_not_the_holders_door_is_refused(tmp_path):
    # Someone else's socket at the door's path cannot prove the token: refused.
    import asyncio
    import socket

    path = tmp_path / "impostor.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.setblocking(False)

    async def answer() -> None:
        conn, _ = await asyncio.get_running_loop().sock_accept(server)
        await asyncio.get_running_loop().sock_recv(conn, 64)
        conn.sendall(bytes(40))  # a grant without the proof (and no descriptor)
        conn.close()

    task = asyncio.get_running_loop().create_task(answer())
    with pytest.raises(TransferError):
        await knock(path, os.urandom(TOKEN_BYTES), 2.0)
    await task
    server.close()


def test_private_dir_is_made_ours_and_a_link_is_refused(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o777)
    os.chmod(loose, 0o777)
    assert stat.S_IMODE(os.stat(private_dir(loose)).st_mode) == 0o700
    link = tmp_path / "link"
    link.symlink_to(loose)
    with pytest.raises(ConfigError, match="not a directory"):
        private_dir(link)


def test_a_run_dir_too_long_for_a_socket_means_no_door(tmp_path):
    deep = tmp_path / ("d" * (MAX_UNIX_PATH - len(str(tmp_path))))
    assert door_path(deep, "127.0.0.1:7400") is None
    assert door_path(tmp_path, "127.0.0.1:7400").name.startswith("pool-")
    assert door_path(tmp_path, "a:1") != door_path(tmp_path, "a:2")
