"""mesh-inspect: the pure formatting from tables, then main() against a stub HTTP server."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kvmesh import inspect as mi
from kvmesh.peers.control_auth import Verifier

A, B, C = "10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"


def status(peer: str, **over) -> dict:
    doc = {
        "peer_id": peer,
        "members": [A, B, C],
        "member_states": {A: {"state": "alive", "incarnation": 0, "addr": A},
                          B: {"state": "alive", "incarnation": 2, "addr": B},
                          C: {"state": "alive", "incarnation": 0, "addr": C}},
        "ring_shares": {A: 0.5, B: 0.25, C: 0.25},
        "tiers": {"cpu": {"chunks": 3, "bytes_used": 3 << 20, "bytes_cap": 1 << 30},
                  "disk": {"chunks": 0, "bytes_used": 0, "bytes_cap": 0}},
        "counters": {"lookup_chunks": 4, "lookup_hit_chunks": 3, "pulls_inflight": 2,
                     "recent_failures": []},
        "hit_rate": 0.75,
        "transports": {B: "tcp", C: "shm"},
        "directory_keys": 7,
    }
    doc.update(over)
    return doc


@pytest.mark.parametrize("n, text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"),
                                     (1536, "1.5 KiB"), (3 << 20, "3.0 MiB"), (1 << 30, "1.0 GiB"),
                                     (5 << 40, "5.0 TiB"), (1 << 52, "4096.0 TiB")])
def test_human_bytes(n, text):
    assert mi.human_bytes(n) == text


@pytest.mark.parametrize("fraction, text", [(None, "-"), (0.0, "0.0%"), (0.755, "75.5%"), (1, "100.0%")])
def test_percent(fraction, text):
    assert mi.percent(fraction) == text


@pytest.mark.parametrize("transports, text", [({}, "-"), ({A: "tcp"}, "tcp:1"),
                                              ({A: "tcp", B: "shm", C: "tcp"}, "shm:1 tcp:2")])
def test_transports_summary(transports, text):
    assert mi.transports_summary(transports) == text


def test_used_of_cap():
    assert mi.used_of_cap({"bytes_used": 3 << 20, "bytes_cap": 1 << 30}) == "3.0 MiB/1.0 GiB"
    assert mi.used_of_cap({"bytes_used": 0, "bytes_cap": 0}) == "-"


def test_format_table_aligns_columns():
    text = mi.format_table(("A", "LONGER"), [["xyz", "1"], ["", "22"]])
    assert text.splitlines() == ["A    LONGER", "xyz  1", "     22"]


def test_mesh_view_accepts_both_documents():
    assert mi.mesh_view({"peers": {A: status(A)}}) == {A: status(A)}
    assert mi.mesh_view(status(B)) == {B: status(B)}


def test_member_rows():
    peers = {A: status(A), B: {"error": "timed out"}}
    rows = mi.member_rows(peers)
    assert rows == [
        [A, "alive", "0", "50.0%", "3/0", "3.0 MiB/1.0 GiB", "-", "75.0%", "2", "shm:1 tcp:1"],
        [B, "alive", "2", "25.0%", "-", "-", "-", "-", "-", "error: timed out"],
        [C, "alive", "0", "25.0%", "-", "-", "-", "-", "-", "not asked"],
    ]


def test_member_rows_prefer_each_peers_own_ring_view():
    peers = {A: status(A), B: status(B, ring_shares={A: 0.4, B: 0.6})}
    assert [r[3] for r in mi.member_rows(peers)] == ["50.0%", "60.0%", "25.0%"]


def test_member_state_keeps_swims_winning_claim_and_counts_dissent():
    dead_c = {C: {"state": "dead", "incarnation": 0, "addr": C}}
    gone = {"peer_id": B, "member_states": {**dead_c, "10.0.0.9:7000": {
        "state": "left", "incarnation": 4, "addr": "10.0.0.9:7000"}}}
    peers = {A: status(A), B: gone}
    assert mi.member_state(C, peers) == ("dead (1/2)", "0")  # dead beats alive at one incarnation
    assert mi.member_state(B, peers) == ("alive", "2")
    assert mi.member_state("10.0.0.9:7000", peers) == ("left", "4")
    assert mi.member_state("10.0.0.8:7000", peers) == ("-", "-")
    refuted = status(B, member_states={C: {"state": "alive", "incarnation": 1, "addr": C}})
    assert mi.member_state(C, {A: gone, B: refuted}) == ("alive (1/2)", "1")
    # The dead and the left stay in the table; the summary counts members only.
    assert "10.0.0.9:7000" in [r[0] for r in mi.member_rows(peers)]
    assert mi.summary_line(peers).startswith("3 members")


def test_failure_rows_newest_first_and_capped():
    peers = {A: status(A, counters={"recent_failures": [{"at": 100.0, "what": "old"},
                                                         {"at": 300.0, "what": "newest"}]}),
             B: status(B, counters={"recent_failures": [{"at": 200.0, "what": "middle"}]}),
             C: {"error": "down"}}
    assert mi.failure_rows(peers) == [[mi.clock(300.0), A, "newest"], [mi.clock(200.0), B, "middle"],
                                      [mi.clock(100.0), A, "old"]]
    assert [r[2] for r in mi.failure_rows(peers, limit=1)] == ["newest"]


def test_summary_line_sums_answering_peers():
    peers = {A: status(A), B: status(B), C: {"error": "down"}}
    assert mi.summary_line(peers) == "3 members, 2 answered; mesh hit rate 75.0% (6/8 chunks)"


def test_render_whole_report():
    doc = {"peers": {A: status(A, counters={"lookup_chunks": 0, "lookup_hit_chunks": 0,
                                            "pulls_inflight": 0,
                                            "recent_failures": [{"at": 0.0, "what": "pull x"}]},
                            hit_rate=None)}}
    lines = mi.render(doc).splitlines()
    assert lines[0] == "3 members, 1 answered; mesh hit rate - (0/0 chunks)"
    assert lines[2].split() == ["PEER", "STATE", "INC", "RING", "CHUNKS", "cpu/disk", "CPU", "used/cap", "DISK",
                                "used/cap", "HIT", "RATE", "PULLS", "TRANSPORTS"]
    assert lines[3].split()[:6] == [A, "alive", "0", "50.0%", "3/0", "3.0"]
    assert "Recent failures" in lines
    assert lines[-1].split()[1:] == [A, "pull", "x"]


def test_render_single_peer_status_without_failures():
    text = mi.render(status(A))
    assert "Recent failures" not in text and A in text


def test_render_codec_savings_per_peer_and_codec():
    saved = {"fp8": {"disk": 3 << 20, "wire": 1536, "compress": 0},
             "zstd": {"disk": 0, "wire": 2 << 30, "compress": "junk"}}
    doc = {"peers": {A: status(A, codec_bytes_saved=saved), B: status(B), C: {"error": "timed out"}}}
    assert mi.codec_rows(mi.mesh_view(doc)) == [[A, "fp8", "3.0 MiB", "1.5 KiB", "0 B"],
                                                [A, "zstd", "0 B", "2.0 GiB", "0 B"]]
    lines = mi.render(doc).splitlines()
    at = lines.index("Bytes saved by codecs")
    assert lines[at + 1].split() == ["PEER", "CODEC", "DISK", "SAVED", "WIRE", "SAVED", "COMPRESS", "SAVED"]
    assert lines[at + 2].split() == [A, "fp8", "3.0", "MiB", "1.5", "KiB", "0", "B"]
    assert "Bytes saved by codecs" not in mi.render(status(A, codec_bytes_saved={}))


# ---- I/O: main against a stub control API -----------------------------------------------------

class Stub(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, object]] = {}
    seen: list[tuple[str, str | None]] = []
    hosts: list[str | None] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        self.seen.append((self.path, self.headers.get("Authorization")))
        self.hosts.append(self.headers.get("Host"))
        code, body = self.routes.get(self.path, (404, {"error": "Not Found"}))
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    Stub.routes, Stub.seen, Stub.hosts = {}, [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_main_prints_mesh_table(stub, capsys):
    Stub.routes["/status?scope=mesh"] = (200, {"peers": {A: status(A)}})
    assert mi.main([stub]) == 0
    out = capsys.readouterr().out
    assert out.startswith("3 members, 1 answered") and "shm:1 tcp:1" in out


def test_main_json_and_secret_from_env(stub, capsys, monkeypatch):
    monkeypatch.setenv(mi.SECRET_ENV, "s3cret")
    Stub.routes["/status?scope=mesh"] = (200, {"peers": {A: status(A)}})
    assert mi.main([stub + "/", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"peers": {A: status(A)}}
    assert [p for p, _ in Stub.seen] == ["/status?scope=mesh"]
    assert_signed(b"s3cret")


def assert_signed(secret: bytes) -> None:
    """Every request the stub saw carried a valid signature, never the secret."""
    verifier = Verifier(secret)
    for (path, authorization), host in zip(Stub.seen, Stub.hosts):
        assert secret.decode() not in authorization
        assert verifier.check(authorization, "GET", path, host, b"") is None


def test_main_falls_back_to_local_status(stub, capsys):
    Stub.routes["/status?scope=mesh"] = (400, {"error": "scope must be one of local"})
    Stub.routes["/status"] = (200, status(B))
    assert mi.main([stub, "--secret", "x"]) == 0
    assert B in capsys.readouterr().out
    assert [p for p, _ in Stub.seen] == ["/status?scope=mesh", "/status"]
    assert_signed(b"x")


def test_main_explains_401(stub, capsys):
    Stub.routes["/status?scope=mesh"] = (401, {"error": "missing or wrong mesh secret"})
    assert mi.main([stub]) == 1
    assert "KVMESH_SECRET" in capsys.readouterr().err


def test_main_reports_unreachable_peer(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: refused
        assert mi.main([f"127.0.0.1:{s.getsockname()[1]}", "--timeout", "2"]) == 1
    assert "mesh-inspect:" in capsys.readouterr().err


def test_main_refuses_non_object_reply(stub, capsys):
    Stub.routes["/status?scope=mesh"] = (200, [1, 2])
    assert mi.main([stub]) == 1
    assert "not a JSON object" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["u", "--watch", "0"], ["u", "--watch", "soon"]])
def test_main_rejects_bad_arguments(argv):
    with pytest.raises(SystemExit) as exc:
        mi.main(argv)
    assert exc.value.code == 2


def test_watch_redraws_until_ctrl_c(monkeypatch, capsys):
    frames = iter(["one", mi.InspectError("down"), "three"])

    def frame():
        item = next(frames)
        if isinstance(item, Exception):
            raise item
        return item

    sleeps = []

    def sleep(s):
        sleeps.append(s)
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(mi.time, "sleep", sleep)
    assert mi._watch(frame, 1.5) == 0
    out = capsys.readouterr().out
    assert out.count(mi.CLEAR_SCREEN) == 3 and sleeps == [1.5, 1.5, 1.5]
    assert "one" in out and "mesh-inspect: down" in out and "three" in out
