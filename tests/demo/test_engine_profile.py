"""What an engine process reports about its own CPU, by thread role."""

from __future__ import annotations

import threading
import time

import pytest

from kvmesh.demo.engine_profile import role_of, task_schedstats, thread_times


@pytest.mark.parametrize("name, role", [
    ("kvmesh-peer", "kvmesh-peer"), ("kvmesh-save_0", "kvmesh-save"),
    ("kvmesh-load_3", "kvmesh-load"), ("kvmesh-lookup", "kvmesh-lookup"),
    ("MainThread", "other"), ("Thread-7", "other"), ("kvmesh", "other"),
])
def test_role_of(name, role):
    assert role_of(name) == role


def test_task_schedstats_sees_this_thread():
    run, wait, slices = task_schedstats()[threading.get_native_id()]
    assert run > 0 and wait >= 0 and slices > 0


def _spin(seconds: float, stop: threading.Event) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    stop.wait(10)  # stay alive (and listed) until the test has looked


def test_a_kvmesh_thread_lands_in_its_role():
    stop = threading.Event()
    worker = threading.Thread(target=_spin, args=(0.2, stop), name="kvmesh-save_0")
    before = thread_times()
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while thread_times().get("kvmesh-save.run", 0) < 0.2e9 and time.monotonic() < deadline:
            time.sleep(0.01)
        after = thread_times()
    finally:
        stop.set()
        worker.join()
    assert after["kvmesh-save.run"] - before.get("kvmesh-save.run", 0) >= 0.2e9
    assert after["kvmesh-save.slices"] >= 1
    assert after["process"] - before["process"] >= 0.2e9
    assert after["process"] >= after["kvmesh-save.run"] + after["main.run"]


def test_the_main_thread_is_its_own_role():
    times = thread_times()
    if threading.current_thread() is threading.main_thread():
        assert times["main.run"] > 0
    assert set(times) >= {"process", "main.run", "main.wait", "main.slices"}
