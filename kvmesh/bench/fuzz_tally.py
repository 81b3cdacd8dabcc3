"""What a fuzz run counts per surface, and the watchdog that bounds each input.

`Tally` collects one surface's figures: inputs run, crashes (exceptions of a
type the surface does not document as its rejection, or a broken invariant),
hangs (inputs over the watchdog's bound), the first few failing inputs for
reproduction, and resident memory at 10% and at the end (growth is a leak
signal). `Watchdog` is a daemon thread that interrupts an input running past
its bound by raising `InputHang` in the main thread (through a signal, so
only when the fuzzer runs on the main thread; elsewhere a slow input is still
counted as a hang when it returns). Neither is thread-safe beyond that: one
fuzzing loop drives them.
"""

from __future__ import annotations

import os
import resource
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field

SAVED_FAILURES = 5  # failing inputs kept per surface, with their tracebacks
_PAGE = os.sysconf("SC_PAGE_SIZE")


class InputHang(Exception):
    """Raised in the fuzzing thread when an input outlives the watchdog's bound."""


def rss_bytes() -> int:
    """This process's resident set now (from /proc/self/statm)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


def peak_rss_bytes() -> int:
    """The largest resident set this process has had (getrusage: KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Failure:
    kind: str  # "crash" or "hang"
    error: str  # exception type and message, or what broke
    input: dict  # enough to replay it: hex bytes and how they were fed
    trace: str = ""

    def as_json(self) -> dict:
        return {"kind": self.kind, "error": self.error, "input": self.input, "trace": self.trace}


@dataclass
class Tally:
    surface: str
    planned: int
    inputs: int = 0
    rejected: int = 0  # refused the documented way (the expected outcome for most inputs)
    crashes: int = 0
    hangs: int = 0
    seconds: float = 0.0
    rss_at_10pct: int = 0
    rss_end: int = 0
    peak_rss: int = 0
    crash_kinds: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    def crash(self, error: str, case: dict, trace: str = "") -> None:
        self.crashes += 1
        kind = error.split(":", 1)[0]
        self.crash_kinds[kind] = self.crash_kinds.get(kind, 0) + 1
        if len(self.failures) < SAVED_FAILURES:
            self.failures.append(Failure("crash", error, case, trace))

    def crash_from(self, exc: BaseException, case: dict) -> None:
        self.crash(f"{type(exc).__name__}: {exc}"[:500], case,
                   "".join(traceback.format_exception(exc))[-4000:])

    def hang(self, seconds: float, case: dict) -> None:
        self.hangs += 1
        if len(self.failures) < SAVED_FAILURES:
            self.failures.append(Failure("hang", f"input ran {seconds:.2f}s", case))

    def count(self) -> None:
        """One more input done; samples memory once the first 10% are."""
        self.inputs += 1
        if not self.rss_at_10pct and self.inputs >= max(1, self.planned // 10):
            self.rss_at_10pct = rss_bytes()

    def finish(self, seconds: float) -> None:
        self.seconds = seconds
        self.rss_end = rss_bytes()
        self.rss_at_10pct = self.rss_at_10pct or self.rss_end
        self.peak_rss = peak_rss_bytes()

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0

    @property
    def rss_growth(self) -> int:
        return self.rss_end - self.rss_at_10pct


class Watchdog:
    """Bounds inputs run on this thread: `arm()` before one, `disarm()` after.

    `disarm()` returns the input's seconds. Past `limit_s`, a daemon thread
    raises `InputHang` in the main thread (once per input) when the loop runs
    there; a surface counts an input as a hang when it raises InputHang or
    when disarm() returns more than `limit_s`.
    """

    def __init__(self, limit_s: float, poll_s: float = 0.05) -> None:
        self.limit_s = limit_s
        self._poll_s = poll_s
        self._started = 0.0  # 0: no input running
        self._serial = 0
        self._fired = -1
        self._stop = threading.Event()
        self._can_interrupt = threading.current_thread() is threading.main_thread()
        self._old_handler = None
        self._thread = threading.Thread(target=self._watch, name="fuzz-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        if self._can_interrupt:
            self._old_handler = signal.signal(signal.SIGUSR1, self._on_signal)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self._can_interrupt:
            signal.signal(signal.SIGUSR1, self._old_handler)

    def arm(self) -> None:
        self._serial += 1
        self._started = time.monotonic()

    def disarm(self) -> float:
        seconds = time.monotonic() - self._started
        self._started = 0.0
        return seconds

    def _on_signal(self, _signum, _frame) -> None:
        # The input may have ended (and another begun) while the signal was on its way.
        if self._started and self._serial == self._fired:
            raise InputHang(f"input outlived {self.limit_s}s")

    def _watch(self) -> None:
        main = threading.main_thread().ident
        while not self._stop.wait(self._poll_s):
            started, serial = self._started, self._serial
            if (started and serial != self._fired and self._can_interrupt
                    and time.monotonic() - started > self.limit_s):
                self._fired = serial
                signal.pthread_kill(main, signal.SIGUSR1)
