"""`kvmesh bench fuzz`: a short run finds nothing, and bugs planted in each surface are found."""

from __future__ import annotations

import json
import time

import pytest

from kvmesh.bench import fuzz, fuzz_api, fuzz_api_peer, fuzz_frames, report
from kvmesh.bench.fuzz_api_requests import ApiRequest
from kvmesh.membership.swim import Swim
from kvmesh.transfer import codec


@pytest.fixture(autouse=True)
def results_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    return tmp_path


def test_2000_inputs_find_no_crash_or_hang(results_in_tmp):
    started = time.monotonic()
    assert fuzz.main(["--inputs", "2000", "--seed", "1"]) == 0
    assert time.monotonic() - started < 60
    rows = {row[0]: dict(zip(json.loads((results_in_tmp / "fuzz.json").read_text())["columns"], row))
            for row in json.loads((results_in_tmp / "fuzz.json").read_text())["rows"]}
    assert set(rows) == {"codec", "gossip", "api"}
    for surface, row in rows.items():
        assert row["inputs"] >= 600, (surface, row)
        assert row["crashes"] == 0 and row["hangs"] == 0, (surface, row)
        assert 0 < row["rejected"] < row["inputs"], (surface, row)  # both outcomes were reached


def test_a_codec_crash_is_counted_and_its_input_saved(monkeypatch):
    real = codec.FrameDecoder.receive_data

    def buggy(self, data):
        if b"KM\x0c" in bytes(data):  # any CHUNK prefix: an IndexError the codec does not document
            raise IndexError("planted")
        return real(self, data)

    monkeypatch.setattr(codec.FrameDecoder, "receive_data", buggy)
    tally, _ = fuzz.run_surface("codec", 300, None, seed=2, hang_s=1.0)
    assert tally.inputs == 300 and tally.crashes > 0 and tally.crash_kinds == {"IndexError": tally.crashes}
    saved = tally.failures[0].as_json()
    assert b"KM\x0c" in bytes.fromhex(saved["input"]["hex"]) and "planted" in saved["trace"]


def test_a_codec_hang_is_interrupted_and_counted(monkeypatch):
    calls = []

    def stuck_once(self, inp):
        calls.append(1)
        if len(calls) == 5:
            while True:  # only the watchdog gets us out
                pass
        return True, None

    monkeypatch.setattr(fuzz_frames.CodecSurface, "run", stuck_once)
    started = time.monotonic()
    tally, _ = fuzz.run_surface("codec", 20, None, seed=3, hang_s=0.2)
    assert tally.inputs == 20 and tally.hangs == 1 and tally.crashes == 0
    assert time.monotonic() - started < 5
    assert tally.failures[0].kind == "hang"


def test_a_gossip_engine_that_raises_is_a_crash(monkeypatch):
    real = Swim.receive

    def buggy(self, data, src):
        real(self, data, src)
        if self.stats.received % 7 == 0:
            raise KeyError("planted")

    monkeypatch.setattr(Swim, "receive", buggy)
    tally, _ = fuzz.run_surface("gossip", 400, None, seed=4, hang_s=1.0)
    assert tally.crashes > 0 and tally.crash_kinds == {"KeyError": tally.crashes}
    assert tally.failures[0].input["seal"] == "pre"  # only what passed the seal reached it


def test_an_api_500_is_a_crash_with_its_traceback(monkeypatch):
    def buggy(self, keys):
        raise RuntimeError("planted")

    monkeypatch.setattr(fuzz_api_peer.FuzzPeer, "pin", buggy)
    tally, extra = fuzz.run_surface("api", 300, None, seed=5, hang_s=2.0)
    assert tally.crashes > 0 and extra["statuses"].get(500) == tally.crashes
    failure = tally.failures[0].as_json()
    assert failure["input"]["path"].startswith("/pin") and "RuntimeError: planted" in failure["trace"]


def test_a_raw_request_that_fails_is_saved_as_the_bytes_sent(monkeypatch):
    def buggy(self):
        raise RuntimeError("planted")

    monkeypatch.setattr(fuzz_api_peer.FuzzPeer, "status", buggy)
    surface = fuzz_api.ApiSurface(hang_s=2.0)
    try:
        req = ApiRequest(secret=True, method="GET", path="/status", content_type=None, body=b"",
                         raw_seed=7)  # raw, with no mutation
        with pytest.raises(fuzz_api.ServerError) as failed:
            surface.run(req)
    finally:
        surface.close()
    assert failed.value.status == 500 and "RuntimeError: planted" in failed.value.trace
    sent = bytes.fromhex(req.as_json()["sent_hex"])
    assert sent.startswith(b"GET /status HTTP/1.1\r\n") and b"Authorization: Bearer " in sent
