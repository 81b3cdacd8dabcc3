"""Finding 1: any file the peer can open could be read through it.

Reproduced on protocol 2: a fake holder's WELCOME named this host's id and a
root-only file as its pool (`shm_path`); an attacker's FETCH sent the victim
to that holder, the victim mapped the file, copied it in as a chunk and
served it back to the attacker's PULL. Protocol 3 never opens a path that
came from another process: a same-host pool arrives only as a descriptor
from the holder's door, and FETCH only goes to live members.
"""

from __future__ import annotations

import asyncio
import os

from kvmesh.transfer import frames as f
from kvmesh.transfer.shm import host_id
from tests.security.hostile import FakeHolder, HostileClient
from tests.security.victims import SLOT, checksum, held_bytes, keys_for, namespace, peers  # noqa: F401


def _secret_file(tmp_path) -> tuple[str, bytes]:
    path = tmp_path / "root-only"
    data = os.urandom(SLOT)
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return str(path), data


def _refs_into_the_file(data: bytes):
    """A holder that answers every pull with a ref to offset 0 of its 'pool'."""
    def refs(pull: f.Pull) -> list[f.Frame]:
        return [f.ChunkRefs(pull.request_id, (0,), (pull.keys[0],), (checksum(data),), (len(data),),
                            (0,), 1)]
    return refs


async def test_fetch_toward_a_fake_holder_is_refused_and_never_dials_it(peers, tmp_path):
    victim = peers()
    path, data = _secret_file(tmp_path)
    ns = namespace(victim)
    holder = FakeHolder(ns, host_id=host_id(), shm_path=path, pool_token=b"t" * 32,
                        refs=_refs_into_the_file(data))
    claimer = FakeHolder(ns)  # vouches for the attacker's connection: a "member" it made up
    await holder.start()
    await claimer.start()
    key = keys_for(victim, 1)[0]
    attacker = await HostileClient.connect(victim.peer_id, ns, claim=claimer.peer_id)
    try:
        await asyncio.sleep(0.3)  # the victim checks the claim (the claimer vouches)
        await attacker.send(f.Fetch(1, (key,), holder.peer_id))
        reply = await attacker.recv()
        assert isinstance(reply, f.Fetched) and reply.count == 0
        assert holder.accepted == 0  # not a live member: never dialled
        assert held_bytes(victim, key) is None
    finally:
        attacker.close()
        holder.close()
        claimer.close()


async def test_a_holder_claiming_this_host_and_a_path_gets_no_byte_of_the_file(peers, tmp_path):
    # Even taken for a member and pulled from (as after the FETCH the old code
    # obeyed), a holder that names a path and claims our host opens nothing.
    victim = peers()
    path, data = _secret_file(tmp_path)
    holder = FakeHolder(namespace(victim), host_id=host_id(), shm_path=path, pool_token=b"t" * 32,
                        refs=_refs_into_the_file(data))
    await holder.start()
    key = keys_for(victim, 1)[0]

    async def as_member_then_fetch() -> int:
        victim.peer.membership.preload([(holder.peer_id, holder.peer_id)])
        return await victim.peer.fetch([key], holder.peer_id)

    try:
        arrived = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
            as_member_then_fetch(), victim._loop))
        assert arrived == 0
        assert holder.pulls and not holder.pulls[0].shared  # its door never opened: no sharing
        assert held_bytes(victim, key) is None
        assert victim.peer.status().transports.get(holder.peer_id) != "shm"
    finally:
        holder.close()
