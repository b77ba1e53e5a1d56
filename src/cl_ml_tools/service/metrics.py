"""``GET /metrics`` in the Prometheus text format (prometheus-client).

Job figures are read from the queue at each scrape, so every server process answers for the whole service
(and the totals survive restarts); HTTP request counts are this process's own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import __version__
from .diskspace import DiskSpace
from .jobs import BUCKETS, RUN_SECONDS, WAIT_SECONDS, JobStore
from .mqtt import Events

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


HISTOGRAMS = {
    RUN_SECONDS: ("cl_ml_tools_job_duration_seconds", "Run time of finished jobs (start to end), by plugin."),
    WAIT_SECONDS: ("cl_ml_tools_job_queue_wait_seconds", "Time jobs waited in the queue before a start, by plugin."),
}


class _Queue(Collector):
    def __init__(self, store: JobStore, events: Events, disk: DiskSpace):
        self.store = store
        self.events = events
        self.disk = disk

    def _histograms(self) -> Iterator[Metric]:
        found = self.store.histograms()
        for key, (name, text) in HISTOGRAMS.items():
            family = HistogramMetricFamily(name, text, labels=["plugin"])
            for (kind, plugin), buckets in sorted(found.items()):
                if kind != key:
                    continue
                cumulative, running = [], 0
                for bound, (count, _) in zip(BUCKETS, buckets, strict=True):
                    running += count
                    cumulative.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
                family.add_metric([plugin], cumulative, sum(total for _, total in buckets))
            yield family

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "cl_ml_tools_jobs", "Jobs in the queue now, by plugin and state.", labels=["plugin", "state"]
        )
        for (plugin, state), n in sorted(self.store.counts().items()):
            jobs.add_metric([plugin, state], n)
        yield jobs
        totals = self.store.totals()
        finished = CounterMetricFamily(
            "cl_ml_tools_jobs_finished",
            "Jobs finished since the queue was created, by plugin and outcome.",
            labels=["plugin", "state"],
        )
        seconds = CounterMetricFamily(
            "cl_ml_tools_job_run_seconds",
            "Seconds spent running finished jobs, by plugin and outcome.",
            labels=["plugin", "state"],
        )
        for (plugin, state), (n, s) in sorted(totals.items()):
            finished.add_metric([plugin, state], n)
            seconds.add_metric([plugin, state], s)
        yield finished
        yield seconds
        yield from self._histograms()
        _, oldest = self.store.queued()
        age = GaugeMetricFamily(
            "cl_ml_tools_oldest_queued_job_age_seconds", "Age of the oldest queued job (0 when none is queued)."
        )
        age.add_metric([], max(0.0, time.time() - oldest) if oldest is not None else 0.0)
        yield age
        free = GaugeMetricFamily("cl_ml_tools_storage_free_bytes", "Free space in the storage folder's filesystem.")
        free.add_metric([], self.disk.free_bytes())
        yield free
        low = GaugeMetricFamily(
            "cl_ml_tools_storage_low", "1 when the free space is under storage.min_free_bytes (no job starts)."
        )
        low.add_metric([], 1 if self.disk.low() else 0)
        yield low
        mqtt = GaugeMetricFamily("cl_ml_tools_mqtt_connected", "1 when MQTT is on and connected.")
        mqtt.add_metric([], 1 if self.events.state == "connected" else 0)
        yield mqtt
        info = GaugeMetricFamily("cl_ml_tools_info", "The running version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


class Metrics:
    def __init__(self, store: JobStore, events: Events, disk: DiskSpace):
        # The *_created series (when each counter was first touched) only double the output here.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cl_ml_tools_http_requests",
            "HTTP requests answered by this server process, by method, route and status code.",
            ["method", "route", "code"],
            registry=self.registry,
        )
        self.upload_bytes = Counter(
            "cl_ml_tools_upload_bytes", "Bytes of files accepted by this server process.", registry=self.registry
        )
        self.server_errors = Counter(
            "cl_ml_tools_http_server_errors",
            "5xx answers of this server process, by route, status code and cause (the error code of the answer, "
            "or the exception's class for a failure).",
            ["route", "code", "cause"],
            registry=self.registry,
        )
        self.registry.register(_Queue(store, events, disk))

    def count_request(self, method: str, route: str, code: int, cause: str | None = None) -> None:
        self.requests.labels(method, route, str(code)).inc()
        if code >= 500:
            self.server_errors.labels(route, str(code), cause or "unknown").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
