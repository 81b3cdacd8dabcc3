"""`kvmesh` command line: `--help` anywhere prints usage, exits 0 and starts
nothing; a bad command exits 2 with usage on stderr; `python -m kvmesh` works."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmesh import cli
from kvmesh.bench import main as bench_main

ROOT = Path(__file__).resolve().parents[1]
# Imports (torch) take a few seconds on a loaded machine; a benchmark takes minutes.
HELP_LIMIT_S = 60


def run_module(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "kvmesh", *args], capture_output=True,
                          text=True, env=env, timeout=HELP_LIMIT_S, cwd=ROOT)


@pytest.fixture
def nothing_starts(monkeypatch):
    """Fail the test if the code under test starts a process."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"started a process: {args[:1]}")
    monkeypatch.setattr(subprocess, "Popen", refuse)


def exit_status(argv: list[str]) -> int:
    """What `kvmesh ARGV` would exit with: main's return value or SystemExit's code."""
    try:
        return cli.main(argv)
    except SystemExit as exit_:
        return exit_.code


def call_help(argv: list[str], capsys) -> str:
    started = time.monotonic()
    assert exit_status(argv) == 0, argv
    assert time.monotonic() - started < 5, argv
    out = capsys.readouterr().out
    assert out.startswith("usage:"), out
    return out


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_command_help(name, flag, capsys, nothing_starts):
    importlib.import_module(cli.COMMANDS[name][0])  # import cost is not part of the limit
    assert "-h, --help" in call_help([name, flag], capsys)  # argparse's own help, printed


BENCH_MODULES = {**bench_main.BENCHMARKS, **bench_main.CHECKS}


@pytest.mark.parametrize("name", sorted(BENCH_MODULES))
def test_bench_help(name, capsys, nothing_starts):
    importlib.import_module(BENCH_MODULES[name])
    assert f"kvmesh bench {name}" in call_help(["bench", name, "--help"], capsys)


@pytest.fixture
def bench_runs(monkeypatch) -> list[str]:
    """Replace every benchmark's entry point with a recorder."""
    ran: list[str] = []
    for name, module in bench_main.BENCHMARKS.items():
        monkeypatch.setattr(importlib.import_module(module), "main",
                            lambda argv, name=name: ran.append(name) or 0)
    return ran


@pytest.mark.parametrize("argv", [["bench", "--help"], ["bench", "-h"], ["bench", "all", "--help"],
                                  ["--help"], ["-h"]])
def test_help_runs_no_benchmark(argv, capsys, bench_runs, nothing_starts):
    status = exit_status(argv)
    assert bench_runs == []
    assert status == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:"), out
    if argv[0] == "bench" and argv[1] != "all":
        assert all(name in out for name in [*BENCH_MODULES, "all"])


def test_bench_all_still_runs_every_benchmark(bench_runs):
    assert cli.main(["bench", "all"]) == 0
    assert bench_runs == list(bench_main.BENCHMARKS)


def test_bench_all_leaves_the_long_checks_out(monkeypatch, bench_runs):
    for name, module in bench_main.CHECKS.items():
        monkeypatch.setattr(importlib.import_module(module), "main",
                            lambda argv, name=name: bench_runs.append(name) or 0)
    assert cli.main(["bench", "all"]) == 0
    assert not set(bench_runs) & set(bench_main.CHECKS)


def test_bench_name_gets_its_args_verbatim(monkeypatch):
    seen = []
    monkeypatch.setattr(importlib.import_module(bench_main.BENCHMARKS["gossip"]), "main",
                        lambda argv: seen.append(argv) or 3)
    assert cli.main(["bench", "gossip", "--peers", "5", "--", "x"]) == 3
    assert seen == [["--peers", "5", "--", "x"]]


@pytest.mark.parametrize("argv", [[], ["nosuch"], ["--bogus"], ["bench"], ["bench", "nosuch"],
                                  ["bench", "all", "--bogus"], ["inspect", "--bogus"]])
def test_bad_usage_exits_2(argv, capsys, bench_runs):
    assert exit_status(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and "usage:" in err
    assert bench_runs == []


def test_python_dash_m_help():
    proc = run_module("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: kvmesh")
    assert all(name in proc.stdout for name in cli.COMMANDS)


def test_python_dash_m_bench_all_help_is_quick():
    started = time.monotonic()
    proc = run_module("bench", "all", "--help")  # the whole suite would run for minutes
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:")
    assert time.monotonic() - started < HELP_LIMIT_S


def test_python_dash_m_unknown_command():
    proc = run_module("nosuch")
    assert proc.returncode == 2
    assert proc.stdout == "" and "usage: kvmesh" in proc.stderr
