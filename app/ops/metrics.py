"""Prometheus metrics: the registry served at /metrics.

Three sources, one registry per app:
- HTTP requests, counted and timed by `app.ops.requests`' middleware, labelled by route template
  (never the raw path, so ids and scanners cannot explode the label set) and status;
- the database, read at scrape time: trials per status, queue depth, running trials, worker
  heartbeat ages, and the epoch duration / images-per-second histograms, fed from the
  `epoch_metrics` rows that workers (other processes, other machines) write;
- this process: predict batch sizes and model reloads (`app.ops.instruments`, fed by the
  serving code), GPU memory when there is a GPU, and the usual process_* metrics.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import Scope

from app.ops.instruments import MODEL_RELOADS, PREDICT_BATCH_SIZE
from app.store.tables import EpochMetric, Job, Trial
from app.store.workers import LIVE_HEARTBEATS, WorkerHeartbeat, worker_heartbeats
from ml.status import JobStatus, TrialStatus

log = logging.getLogger("sweepserve.metrics")
QUEUED, RUNNING = TrialStatus.QUEUED, TrialStatus.RUNNING

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
EPOCH_SECONDS_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
IMAGES_PER_SECOND_BUCKETS = (25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000)
HEARTBEAT_WINDOW_SECONDS = 24 * 3600  # workers silent for longer are history, not a gauge
EPOCH_ROWS_PER_SCRAPE = 20_000  # a first scrape of a big database catches up over a few scrapes
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# --- HTTP ------------------------------------------------------------------------------------


class HttpMetrics:
    def __init__(self) -> None:
        labels = ("method", "route", "status")
        self.requests = Counter("sweepserve_http_requests", "HTTP requests answered", labels, registry=None)
        self.latency = Histogram(
            "sweepserve_http_request_duration_seconds",
            "Time from the request's arrival to the end of its response",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=None,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        labels = (method if method in KNOWN_METHODS else "OTHER", route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)


def route_template(scope: Scope) -> str:
    """`/jobs/{job_id}` rather than `/jobs/42`, from what the router left in the scope."""
    path = getattr(scope.get("route"), "path", None)  # FastAPI routes
    if path:
        return path
    if "endpoint" not in scope:
        return "unmatched"  # nothing answered: every scanner's 404 shares one label
    mount = scope.get("root_path", "")[len(scope.get("app_root_path", "")) :]
    if mount:
        return f"{mount}/{{path}}"  # a mounted app (the static files)
    # A plain Starlette route (the API docs) leaves no route in the scope; with no parameters, its
    # path is its template.
    return "unmatched" if scope.get("path_params") else scope["path"]


# --- the database ----------------------------------------------------------------------------


class DatabaseCollector(Collector):
    """Reads the queue's state when Prometheus scrapes; a database outage shows as database_up 0."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app  # the session factory only exists once the lifespan has started
        self._lock = threading.Lock()  # two scrapers at once must not feed the same rows twice
        self._last_epoch_id = 0
        self._epoch_seconds = Histogram(
            "sweepserve_epoch_duration_seconds",
            "Wall time of one training epoch (train + validation), from the workers' epoch_metrics rows",
            buckets=EPOCH_SECONDS_BUCKETS,
            registry=None,
        )
        self._images_per_second = Histogram(
            "sweepserve_epoch_images_per_second",
            "Training throughput of one epoch, from the workers' epoch_metrics rows",
            buckets=IMAGES_PER_SECOND_BUCKETS,
            registry=None,
        )

    def describe(self) -> Iterable[Metric]:
        return []  # names are fixed here; collecting at registration would need the database

    def collect(self) -> Iterator[Metric]:
        factory: sessionmaker[Session] | None = getattr(self._app.state, "session_factory", None)
        gauges: list[Metric] = []
        try:
            if factory is not None:
                with self._lock, factory() as session:
                    gauges = self._read(session)
        except SQLAlchemyError as exc:
            log.warning("metrics: the database could not be read: %s", exc)
        # No gauges means they would be stale or invented: database_up 0 says so instead.
        yield _gauge("sweepserve_database_up", "1 when this scrape could read the database", bool(gauges))
        yield from gauges
        yield from self._epoch_seconds.collect()
        yield from self._images_per_second.collect()

    def _read(self, session: Session) -> list[Metric]:
        heartbeat_seconds: float = self._app.state.settings.heartbeat_seconds
        self._feed_epochs(session)
        trials = dict(session.execute(select(Trial.status, func.count()).group_by(Trial.status)).all())
        jobs = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        beats = worker_heartbeats(session, HEARTBEAT_WINDOW_SECONDS)
        return [
            _by_status("sweepserve_trials", "Trials per status", TrialStatus, trials),
            _by_status("sweepserve_jobs", "Jobs per status", JobStatus, jobs),
            _gauge(
                "sweepserve_queue_depth", "Trials waiting for a worker", trials.get(TrialStatus.QUEUED, 0)
            ),
            _gauge(
                "sweepserve_running_trials", "Trials claimed by a worker", trials.get(TrialStatus.RUNNING, 0)
            ),
            _gauge(
                "sweepserve_workers_alive",
                f"Workers whose heartbeat is younger than {LIVE_HEARTBEATS} heartbeat intervals",
                sum(b.age_seconds < LIVE_HEARTBEATS * heartbeat_seconds for b in beats),
            ),
            _heartbeat_ages(beats),
        ]

    def _feed_epochs(self, session: Session) -> None:
        rows = session.execute(
            select(EpochMetric.id, EpochMetric.seconds, EpochMetric.images_per_second)
            .where(EpochMetric.id > self._last_epoch_id)
            .order_by(EpochMetric.id)
            .limit(EPOCH_ROWS_PER_SCRAPE)
        ).all()
        for row_id, seconds, images_per_second in rows:
            self._epoch_seconds.observe(seconds)
            self._images_per_second.observe(images_per_second)
            self._last_epoch_id = row_id


def _gauge(name: str, documentation: str, value: Any) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value or 0))


def _by_status(name: str, documentation: str, statuses: Iterable[str], counts: dict[str, int]) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=["status"])
    for status in statuses:
        family.add_metric([status], counts.get(status, 0))
    return family


def _heartbeat_ages(beats: list[WorkerHeartbeat]) -> Metric:
    family = GaugeMetricFamily(
        "sweepserve_worker_heartbeat_age_seconds",
        "Seconds since each worker's last heartbeat (workers seen in the last 24 h)",
        labels=["worker", "hostname"],
    )
    for beat in beats:
        family.add_metric([beat.worker_id, beat.hostname], beat.age_seconds)
    return family


# --- GPU -------------------------------------------------------------------------------------


class GpuMemoryCollector(Collector):
    """Memory this process's PyTorch allocator holds on each GPU; nothing without a GPU."""

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        import torch  # here: scrapes of a GPU-less API should not pay for probing CUDA at import

        if not torch.cuda.is_available():
            return
        allocated = GaugeMetricFamily(
            "sweepserve_gpu_memory_allocated_bytes", "GPU memory held by tensors", labels=["device"]
        )
        reserved = GaugeMetricFamily(
            "sweepserve_gpu_memory_reserved_bytes",
            "GPU memory reserved by PyTorch's caching allocator",
            labels=["device"],
        )
        for index in range(torch.cuda.device_count()):
            device = f"cuda:{index}"
            # Before this process first used CUDA nothing is held; asking would create a context.
            initialized = torch.cuda.is_initialized()
            allocated.add_metric([device], torch.cuda.memory_allocated(index) if initialized else 0)
            reserved.add_metric([device], torch.cuda.memory_reserved(index) if initialized else 0)
        yield allocated
        yield reserved


# --- the registry ----------------------------------------------------------------------------


def build_registry(app: FastAPI) -> tuple[CollectorRegistry, HttpMetrics]:
    """The app's registry (served at /metrics) and the HTTP instruments the request middleware feeds."""
    http = HttpMetrics()
    registry = CollectorRegistry()
    collectors: list[Collector] = [
        http.requests,
        http.latency,
        PREDICT_BATCH_SIZE,
        MODEL_RELOADS,
        DatabaseCollector(app),
        GpuMemoryCollector(),
    ]
    for collector in collectors:
        registry.register(collector)
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    return registry, http
