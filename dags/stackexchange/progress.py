"""Progress of the ingest in the task log: bytes downloaded, decompressed and uploaded, rates, ETA.

The pipeline's stages bump their :class:`Counter`; :class:`Reporter` logs all of them from its own
thread every ``interval`` seconds (at most 30), and once more at the end; ``on_report`` (the
ingest's metrics) gets the same figures each time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from stackexchange.source import human_bytes

log = logging.getLogger(__name__)


class Counter:
    """Bytes done so far of ``total`` (None: unknown). Bumped by several threads (the upload
    pool's), read by the reporter: ``+=`` is not atomic, so each bump holds a lock."""

    def __init__(self, total: int | None = None) -> None:
        self.done = 0
        self.total = total
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            self.done += count


class Reporter:
    """Use as a context manager around the work; ``counters`` maps a stage name to its counter."""

    def __init__(
        self,
        what: str,
        counters: dict[str, Counter],
        interval: float,
        on_report: Callable[[Mapping[str, int], float], None] | None = None,
    ) -> None:
        self.what, self.counters, self.interval = what, counters, interval
        self.on_report = on_report
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self.started = time.monotonic()

    def __enter__(self) -> Reporter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.report()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.report()

    def report(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        parts, fractions = [], []
        for stage, counter in self.counters.items():
            rate = counter.done / elapsed / 1e6
            if counter.total:
                fraction = min(counter.done / counter.total, 1.0)
                fractions.append(fraction)
                parts.append(f"{stage} {human_bytes(counter.done)} of "
                             f"{human_bytes(counter.total)} ({100 * fraction:.0f}%) "
                             f"at {rate:.1f} MB/s")  # fmt: skip
            else:
                parts.append(f"{stage} {human_bytes(counter.done)} at {rate:.1f} MB/s")
        slowest = min(fractions, default=0.0)
        eta = f"ETA {elapsed * (1 - slowest) / slowest:.0f}s" if 0 < slowest < 1 else ""
        log.info("%s: %s%s", self.what, "; ".join(parts), f"; {eta}" if eta else "")
        if self.on_report is not None:
            self.on_report({stage: c.done for stage, c in self.counters.items()}, elapsed)
