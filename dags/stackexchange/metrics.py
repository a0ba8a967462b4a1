"""The ingest's own figures, sent through Airflow's ``Stats`` (statsd when ``[metrics] statsd_on``).

Names (after Airflow's ``statsd_prefix``, ``airflow.``), with the site last because site names
hold dots; ``chart/values-metrics.yaml`` maps each to a labelled Prometheus metric:

- ``stackexchange.ingest.bytes.<stage>.<site>`` counter, stage = downloaded, decompressed, uploaded
- ``stackexchange.ingest.throughput.<stage>.<site>`` gauge, bytes per second since the ingest began
- ``stackexchange.ingest.rows.<table>.<site>`` counter, rows of each published file (posts, users)
- ``stackexchange.ingest.pairs.<site>`` counter, pairs published
- ``stackexchange.ingest.last_pair_timestamp.<site>`` gauge, unix time of the last published pair
  (``time() - gauge`` is the age of the newest pair)

With metrics off, ``Stats`` is Airflow's no-op logger: nothing is sent and nothing fails.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from stackexchange.publish import Manifest

PREFIX = "stackexchange.ingest"


def _stats():  # -> airflow.metrics.base_stats_logger.StatsLogger
    # Imported when sending, not at DAG parse time (the DAG processor imports ingest.py's callers).
    from airflow.stats import Stats

    return Stats


class IngestFigures:
    """One ingest's byte counters: :meth:`progress` gets cumulative totals and sends the growth
    since the previous call, so the Prometheus counters add up across runs and restarts."""

    def __init__(self, site: str) -> None:
        self.site = site
        self._sent: dict[str, int] = {}

    def progress(self, done: Mapping[str, int], elapsed: float) -> None:
        stats = _stats()
        for stage, total in done.items():
            delta = total - self._sent.get(stage, 0)
            if delta > 0:
                stats.incr(f"{PREFIX}.bytes.{stage}.{self.site}", count=delta)
                self._sent[stage] = total
            stats.gauge(f"{PREFIX}.throughput.{stage}.{self.site}", total / max(elapsed, 1e-6))


def published(manifest: Manifest) -> None:
    """A pair was committed: its rows per table, one more pair, and when (unix seconds)."""
    stats = _stats()
    site = manifest.site
    for name, published_object in manifest.objects.items():
        table = name.removesuffix(".xml").lower()
        stats.incr(f"{PREFIX}.rows.{table}.{site}", count=published_object.rows)
    stats.incr(f"{PREFIX}.pairs.{site}")
    stats.gauge(f"{PREFIX}.last_pair_timestamp.{site}", time.time())
