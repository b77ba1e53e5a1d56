"""``GET /metrics`` in the Prometheus text format (prometheus-client).

Job figures are read from the queue at each scrape, so every server process answers for the whole service
(and the totals survive restarts); HTTP request counts are this process's own.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .jobs import JobStore
from .mqtt import Events

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Queue(Collector):
    def __init__(self, store: JobStore, events: Events):
        self.store = store
        self.events = events

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
        mqtt = GaugeMetricFamily("cl_ml_tools_mqtt_connected", "1 when MQTT is on and connected.")
        mqtt.add_metric([], 1 if self.events.state == "connected" else 0)
        yield mqtt
        info = GaugeMetricFamily("cl_ml_tools_info", "The running version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


class Metrics:
    def __init__(self, store: JobStore, events: Events):
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
        self.registry.register(_Queue(store, events))

    def count_request(self, method: str, route: str, code: int) -> None:
        self.requests.labels(method, route, str(code)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
