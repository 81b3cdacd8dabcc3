"""The drift and remote tables of `bench codecs`, from made-up runs (no engines)."""

from __future__ import annotations

import pytest

from kvmesh.bench import codec_drift, codec_remote
from kvmesh.bench.codec_drift import SETUPS, SetupRun


def outputs(*token_lists, logprob=-1.0):
    return [{"tokens": list(t), "logprobs": [logprob] * len(t)} for t in token_lists]


def setup_run(name, computed, reused, raw_reused=None):
    setup = next(s for s in SETUPS if s.name == name)
    return SetupRun("float32", setup, computed, reused, raw_reused, 6, 6, "raw", 1.0)


def rows(table):
    return {(r[1], r[2]): dict(zip(table.columns, r)) for r in table.rows}


def test_codecs_are_compared_with_exact_reuse_and_exact_reuse_with_the_reference():
    reference = outputs([1, 2, 3], [4, 5, 6])
    exact_reuse = outputs([1, 2, 3], [4, 5, 6], logprob=-1.25)  # drifted from the reference
    runs = [setup_run("exact", reference, exact_reuse),
            # fp8's reuse equals exact reuse: no drift, though both differ from the reference
            setup_run("fp8", reference, outputs([1, 2, 3], [4, 5, 6], logprob=-1.25)),
            setup_run("fp8-broken", reference, outputs([1, 9, 9], [4, 5, 6], logprob=-2.25)),
            setup_run("zstd", reference, exact_reuse, raw_reused=exact_reuse)]
    table = rows(codec_drift.table(runs))
    exact = table["exact", "reference"]
    assert exact["prompts all tokens identical"] == "2 / 2"
    assert exact["max |dlogprob|"] == 0.25
    assert table["fp8", "exact reuse"]["max |dlogprob|"] == 0.0
    broken = table["fp8-broken (negative control)", "exact reuse"]
    assert broken["prompts all tokens identical"] == "1 / 2"
    assert broken["mean tokens before divergence"] == "2.00 / 3"  # 1 and 3
    assert broken["max |dlogprob|"] == 1.0


def test_the_notes_give_the_noise_floor_and_the_lossless_self_check():
    reference = outputs([1, 2], [3, 4])
    runs = [setup_run("exact", reference, reference),
            setup_run("int8", outputs([1, 2], [3, 7]), reference),  # computed round drifted
            setup_run("zstd", reference, reference, raw_reused=reference)]
    notes = " ".join(codec_drift.table(runs).notes)
    assert "3 / 4 prompts all tokens identical" in notes
    assert "zstd reuse against the same engine's raw reuse just before: 2 / 2" in notes


def test_remote_rows_compare_each_codec_with_exact_at_the_same_link():
    hits = codec_remote.Hits("bfloat16", 512, recompute_ttft=1.0,
                             stream_gbps={0: 1.0, 1000: 0.125})
    for (codec, mbit), seconds, nbytes in [(("none", 0), [0.04, 0.05, 0.06], 8 << 20),
                                           (("fp8", 0), [0.06, 0.07, 0.08], 4 << 20),
                                           (("none", 1000), [0.10, 0.12, 0.11], 8 << 20),
                                           (("fp8", 1000), [0.06, 0.05, 0.07], 4 << 20)]:
        hits.seconds[codec, mbit] = seconds
        hits.ttft[codec, mbit] = [s + 0.01 for s in seconds]
        hits.nbytes[codec, mbit] = [nbytes] * len(seconds)
    table = rows(codec_remote.table([hits]))
    slow = table["1 Gbit/s", "fp8"]
    assert slow["vs exact"] == pytest.approx(0.06 / 0.11)
    assert slow["MiB pulled / hit"] == 4 and slow["load ms (min-max)"] == "50-70"
    assert slow["raw stream ms (exact's bytes)"] == pytest.approx((8 << 20) / 0.125e9 * 1e3)
    assert table["veth (unshaped)", "fp8"]["vs exact"] == pytest.approx(0.07 / 0.05)
    assert table["veth (unshaped)", "exact"]["vs exact"] == 1.0


def test_without_network_namespaces_the_remote_section_says_why(monkeypatch):
    from kvmesh.bench import codecs as bench
    from kvmesh.bench import hosts

    monkeypatch.setattr(hosts, "unavailable", lambda: "needs root to create network namespaces")
    run = bench.Run(bench._parser().parse_args([]))
    bench.measure_remote(run)
    table = bench.remote_table(run)
    assert run.remote == []
    assert table.rows == [["network namespaces unavailable: needs root to create network "
                           "namespaces"]]
