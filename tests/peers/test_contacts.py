"""Contacts: members' control URLs, from handshakes (remote input) and gone with the member."""

import asyncio

from kvmesh.peers.contacts import MAX_CONTROL_URLS, Contacts


def _contacts() -> Contacts:
    async def no_dial(peer):
        raise ConnectionError("no network in this test")

    return Contacts("10.0.0.1:7400", b"n" * 16, None, 1.0, no_dial, lambda peer: None)


def test_a_departed_member_s_control_url_is_forgotten():
    contacts = _contacts()
    contacts.note_control_port("10.0.0.2:7400", 8080)
    assert asyncio.run(contacts.control_urls(["10.0.0.2:7400"])) == {
        "10.0.0.2:7400": "http://10.0.0.2:8080"}
    contacts.forget("10.0.0.2:7400")
    assert asyncio.run(contacts.control_urls(["10.0.0.2:7400"])) == {}


def test_identities_that_never_leave_cannot_grow_the_table_for_ever():
    contacts = _contacts()
    for i in range(MAX_CONTROL_URLS + 500):
        contacts.note_control_port(f"10.1.{i // 250}.{i % 250}:7400", 8080)
    assert len(contacts._control_urls) <= MAX_CONTROL_URLS
    known = "10.1.0.0:7400"  # one already held may still change its port
    contacts.note_control_port(known, 9090)
    assert contacts._control_urls[known].endswith(":9090")


def test_ports_that_are_not_tcp_ports_are_ignored():
    contacts = _contacts()
    for port in (-1, 0, 65536, 1 << 40):
        contacts.note_control_port("10.0.0.3:7400", port)
    assert asyncio.run(contacts.control_urls(["10.0.0.3:7400"])) == {}
