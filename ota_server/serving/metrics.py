"""Prometheus metrics: request counts and latencies per route, plus fleet gauges read at scrape.

Under gunicorn ``ota-server serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker starts,
so counters and histograms are aggregated across workers (prometheus-client multiprocess mode);
without it (``--debug``, tests calling ``create_app``) they are per process. Fleet gauges
(devices per group, rollouts per status, running versions) are computed from the database on
each scrape, so they are the same whichever worker answers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["FleetReader", "Metrics"]

FleetReader = Callable[[], tuple[dict[str, int], dict[str, int], dict[str, int]]]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "edgefleet_http_requests_total",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "edgefleet_http_request_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
            registry=self.registry,
        )
        self.bad_auth = Counter("edgefleet_auth_failures_total", "failed authentications", registry=self.registry)
        self.enrolled_during_rollout = Counter(
            "edgefleet_enrollments_in_active_rollout_total",
            "devices that joined the selection of an active rollout (enrolled or approved during it)",
            registry=self.registry,
        )
        self.signatures = Counter(
            "edgefleet_assignment_signatures_total",
            "assignments the director signed (a poll answered from the caches signs none)",
            registry=self.registry,
        )
        # (route, method, status) -> its two children: ``labels()`` validates and locks on every
        # call, which costs more than the increments on a 304 that takes a few hundred µs
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.latency.labels(route, method))
            self._children[key] = children  # a race only builds the same pair twice
        children[0].inc()
        children[1].observe(seconds)
        if status == 401:
            self.bad_auth.inc()

    def render(self, fleet: FleetReader) -> bytes:
        registry = CollectorRegistry()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            text = generate_latest(registry)
        else:
            text = generate_latest(self.registry)
        extra = CollectorRegistry()
        extra.register(_FleetCollector(fleet))
        return text + generate_latest(extra)


class _FleetCollector(Collector):
    def __init__(self, fleet: FleetReader) -> None:
        self._fleet = fleet

    def collect(self) -> Iterator[Metric]:
        devices, rollouts, versions = self._fleet()
        g = GaugeMetricFamily("edgefleet_devices", "enrolled devices per group", labels=["group"])
        for group, n in sorted(devices.items()):
            g.add_metric([group], n)
        yield g
        r = GaugeMetricFamily("edgefleet_rollouts", "rollouts per status", labels=["status"])
        for status, n in sorted(rollouts.items()):
            r.add_metric([status], n)
        yield r
        v = GaugeMetricFamily("edgefleet_devices_running", "devices per running model version", labels=["model"])
        for model, n in sorted(versions.items()):
            v.add_metric([model], n)
        yield v
