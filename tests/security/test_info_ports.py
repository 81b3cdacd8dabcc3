"""Ports a member's INFO tells are checked before they become URLs.

INFO's control port is a wire integer (the codec admits any 64-bit value);
it was made into the member's control URL as it came, so a member could
have `?scope=mesh` aim at port -1 or 70000. Only a TCP port is taken now.
"""

import pytest

from kvmesh.peers.contacts import Contacts


async def _never(peer):
    raise AssertionError("no dial expected")


@pytest.mark.parametrize("port", [-1, 65536, 1 << 40])
async def test_a_control_port_that_is_no_tcp_port_is_not_kept(port):
    contacts = Contacts("127.0.0.1:1", b"n" * 16, None, 1.0, _never, lambda peer: None)
    contacts.note_control_port("127.0.0.1:2", port)
    contacts.note_control_port("127.0.0.1:3", 8080)
    assert await contacts.control_urls(["127.0.0.1:3"]) == {"127.0.0.1:3": "http://127.0.0.1:8080"}
    assert "127.0.0.1:2" not in contacts._control_urls
