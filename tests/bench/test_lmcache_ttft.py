import argparse
from pathlib import Path

from kvmesh.bench.lmcache_ttft import LMCacheTTFT, add_arguments, skip_reason, table

KVMESH_ROW = [8160, 30.0, 1.5, 1.0, 25.0, 16.7, 25.0]


def args_for(tmp_path: Path, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--lmcache-python", str(tmp_path / "python"),
                              "--lmcache-vllm-site", str(tmp_path / "site"), *argv])


def test_skip_reasons(tmp_path):
    assert skip_reason(args_for(tmp_path, "--no-lmcache")) == "--no-lmcache"
    assert "make lmcache-setup" in skip_reason(args_for(tmp_path))
    python = tmp_path / "python"
    python.write_text("")
    python.chmod(0o755)
    assert "make lmcache-vllm-setup" in skip_reason(args_for(tmp_path))
    (tmp_path / "site" / "lmcache").mkdir(parents=True)
    assert skip_reason(args_for(tmp_path)) is None


def test_hit_counts_only_with_the_recompute_output():
    good = table(KVMESH_ROW, LMCacheTTFT(28.0, [0.5, 0.4, 0.6], True, 31), None, 3, 32)
    hit = good.rows[-1]
    assert hit[1:] == [0.5, 50.0, 0.5, "yes"]
    wrong = table(KVMESH_ROW, LMCacheTTFT(28.0, [0.5, 0.4, 0.6], False, 31), None, 3, 32)
    assert wrong.rows[-1][2] == "- (output differs)" and wrong.rows[-1][4] == "NO"


def test_skipped_rows_say_why():
    out = table(KVMESH_ROW, None, "no .lmcache-vllm/lmcache", 3, 32)
    assert [r[0] for r in out.rows] == [
        "baseline: recompute, vLLM without a connector (C)", "kvmesh: recompute + store (A, miss)",
        "kvmesh: remote hit, pulled from A's peer (B)"]
    assert "LMCache rows skipped: no .lmcache-vllm/lmcache" in out.notes
