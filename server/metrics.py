"""`GET /metrics`: what the server is doing, in Prometheus's text format (prometheus_client).

Under gunicorn every worker is a process of its own, and a scrape reaches
one of them: so, as prometheus_client's multiprocess mode has it, each
worker writes its figures to files in $PROMETHEUS_MULTIPROC_DIR and the
worker that answers the scrape adds up every worker's files
(server/gunicorn_config.py makes that folder and tells prometheus_client
when a worker dies). Without that variable (the development server, the
tests) the figures are the one process's own.

The prefix cache's figures come from each model's Predictor
(`prefix_cache_stats`), copied into the metrics after every request.
REACH_METRICS=0 switches all of it off: nothing is counted and /metrics
answers 404.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from flask import Blueprint, Response, current_app

from lm.infer.methods.occlusion import filler_states_bytes
from server.errors import ApiError
from server.operations import Operation
from server.registry import ModelRegistry

__all__ = ["LATENCY_BUCKETS", "RequestRecord", "ServerMetrics", "metrics_blueprint", "operations"]

metrics_blueprint = Blueprint("metrics", __name__)

# Seconds: a cached prediction takes milliseconds, a full attribution of a long text seconds, a long generation more.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class RequestRecord:
    """One finished request, as the metrics and the access log see it (never its text)."""

    request_id: str
    method: str
    endpoint: str  # the route's rule ("/v1/predict"), or "unmatched": a path is never a label
    model: str  # "" when the request named no served model
    status: int
    seconds: float
    text_chars: int | None  # characters of "text" or "prompt"; None for a request without one
    attribution: str  # /v1/predict's attribution mode, "" for other endpoints
    generated_words: int
    key: str | None  # the API key's name (never the key), None without keys


@dataclass
class _Seen:
    """A model's prefix-cache counts already copied into the metrics (this process)."""

    hits: int = 0
    misses: int = 0
    prefix_reuses: int = 0


@dataclass
class ServerMetrics:
    """The app's Prometheus metrics (one set per app; per process, added up across workers in multiprocess mode)."""

    multiprocess_dir: str | None
    _seen: dict[str, _Seen] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        # In multiprocess mode the figures live in files and a scrape reads them all; a registry of this process's
        # objects would count this worker twice.
        self.registry = CollectorRegistry()
        registry = None if self.multiprocess_dir else self.registry
        self.requests = Counter("reach_requests", "Requests answered, by endpoint, model and status",
                                ["endpoint", "model", "status"], registry=registry)
        self.latency = Histogram("reach_request_duration_seconds", "Time from a request's arrival to the end of its "
                                 "answer (a stream: until it closes), by endpoint and attribution mode",
                                 ["endpoint", "attribution"], buckets=LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge("reach_requests_in_flight", "Requests being handled now (all workers)",
                               registry=registry, multiprocess_mode="livesum")
        self.in_flight_limit = Gauge("reach_requests_in_flight_limit", "REACH_MAX_IN_FLIGHT: model requests computing "
                                     "at once per worker", registry=registry, multiprocess_mode="livemax")
        self.prefix_hits = Counter("reach_prefix_cache_hits", "Prefix-cache lookups that found the whole context",
                                   ["model"], registry=registry)
        self.prefix_misses = Counter("reach_prefix_cache_misses", "Prefix-cache lookups that had to read units "
                                     "(from a cached prefix or from the start)", ["model"], registry=registry)
        self.prefix_reuses = Counter("reach_prefix_cache_prefix_reuses", "Misses that read on from a cached prefix",
                                     ["model"], registry=registry)
        self.prefix_bytes = Gauge("reach_prefix_cache_bytes", "Bytes the prefix caches hold now (all workers)",
                                  ["model"], registry=registry, multiprocess_mode="livesum")
        self.prefix_contexts = Gauge("reach_prefix_cache_contexts", "Contexts the prefix caches hold now (all workers)",
                                     ["model"], registry=registry, multiprocess_mode="livesum")
        self.filler_bytes = Gauge("reach_occlusion_filler_bytes", "Bytes of occlusion's filler states kept now (all "
                                  "workers; lm/infer/methods/occlusion.py: FillerStates)", ["model"], registry=registry,
                                  multiprocess_mode="livesum")
        self.generated_words = Counter("reach_generated_words", "Words generated (/v1/generate and /v1/completions)",
                                       ["endpoint", "model"], registry=registry)
        self.models_loaded = Gauge("reach_models_loaded", "Models each worker serves", registry=registry,
                                   multiprocess_mode="livemax")

    def started(self) -> None:
        self.in_flight.inc()

    def finished(self, record: RequestRecord, models: ModelRegistry) -> None:
        """Count a finished request and copy the prefix caches' figures."""
        self.in_flight.dec()
        self.requests.labels(record.endpoint, record.model, str(record.status)).inc()
        self.latency.labels(record.endpoint, record.attribution).observe(record.seconds)
        if record.generated_words:
            self.generated_words.labels(record.endpoint, record.model).inc(record.generated_words)
        self.copy_prefix_caches(models)

    def copy_prefix_caches(self, models: ModelRegistry) -> None:
        """Add each model's prefix-cache lookups since the last copy, and set what its cache holds now."""
        with self._lock:
            for name, model in models.models.items():
                stats = model.predictor.prefix_cache_stats
                seen = self._seen.setdefault(name, _Seen())
                for counter, now, before in ((self.prefix_hits, stats.hits, seen.hits),
                                             (self.prefix_misses, stats.misses, seen.misses),
                                             (self.prefix_reuses, stats.prefix_reuses, seen.prefix_reuses)):
                    if now > before:
                        counter.labels(name).inc(now - before)
                seen.hits, seen.misses, seen.prefix_reuses = stats.hits, stats.misses, stats.prefix_reuses
                self.prefix_bytes.labels(name).set(stats.bytes_used)
                self.prefix_contexts.labels(name).set(stats.contexts)
                self.filler_bytes.labels(name).set(filler_states_bytes(model.predictor))

    def exposition(self) -> bytes:
        """Every worker's figures (multiprocess mode) or this process's, in the text format."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        if self.multiprocess_dir:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.multiprocess_dir)
            return generate_latest(registry)
        return generate_latest(self.registry)


def create_metrics(enabled: bool, models: ModelRegistry, in_flight_limit: int) -> ServerMetrics | None:
    """The app's metrics (None when REACH_METRICS is off), with the models loaded and the in-flight bound set."""
    if not enabled:
        return None
    metrics = ServerMetrics(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir"))
    metrics.models_loaded.set(len(models.models))
    metrics.in_flight_limit.set(in_flight_limit)
    metrics.copy_prefix_caches(models)
    return metrics


def app_metrics() -> ServerMetrics | None:
    """The current app's metrics, None when switched off."""
    return current_app.extensions.get("reach_metrics")


@metrics_blueprint.get("/metrics")
def metrics() -> Response:
    """Prometheus's text format: requests, latency, requests in flight, the prefix caches, generated words, models."""
    served = app_metrics()
    if served is None:
        raise ApiError(404, "metrics_off", "metrics are switched off on this server (REACH_METRICS=0)")
    served.copy_prefix_caches(current_app.extensions["reach"])
    return Response(served.exposition(), content_type=CONTENT_TYPE)


def operations() -> list[Operation]:
    """This module's endpoint for /openapi.json."""
    return [Operation("/metrics", "get", "Prometheus metrics of every worker (text format)", None,
                      errors={404: "metrics are switched off (REACH_METRICS=0)", 405: "method not allowed",
                              500: "unexpected error (logged; no internals returned)"},
                      content_type=CONTENT_TYPE.split(";")[0], tags=("operations",),
                      description="docs/DEPLOY.md lists the metrics and gives a scrape configuration.")]
