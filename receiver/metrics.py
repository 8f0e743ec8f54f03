"""Prometheus metrics, in a registry of the app's own (two apps in one process do not clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from receiver.store.base import RecordOutcome

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_DOWNLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_URL_LEFT_BUCKETS = (0, 30, 60, 120, 240, 360, 480, 540, 570, 600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.webhooks = Counter(
            "bfl_hooks_webhooks", "Webhooks received, by outcome.", ["outcome"], registry=r
        )
        # Bound once: .labels() on every webhook is a measurable part of the ack path.
        self.recorded = {o: self.webhooks.labels(o.value) for o in RecordOutcome}
        self.uncorrelated = Counter(
            "bfl_hooks_webhooks_uncorrelated",
            "New tasks whose webhook had a reference no submission knows and no metadata.",
            registry=r,
        )
        self.duplicates = Counter(
            "bfl_hooks_webhook_duplicates", "Deliveries for a task already final.", registry=r
        )
        self.ack_seconds = Histogram(
            "bfl_hooks_ack_seconds",
            "Time from request to answer for accepted webhooks (includes the durable commit).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.downloads = Counter(
            "bfl_hooks_downloads", "Sample download attempts, by outcome.", ["outcome"], registry=r
        )
        self.storage_errors = Counter(
            "bfl_hooks_storage_errors",
            "Failed puts of downloaded images into storage (each kept and tried again).",
            registry=r,
        )
        self.download_bytes = Counter(
            "bfl_hooks_download_bytes", "Bytes of samples stored.", registry=r
        )
        self.download_seconds = Histogram(
            "bfl_hooks_download_seconds",
            "Duration of successful downloads.",
            buckets=_DOWNLOAD_BUCKETS,
            registry=r,
        )
        self.url_seconds_left = Histogram(
            "bfl_hooks_sample_url_seconds_left",
            "Seconds the signed URL had left when its download finished.",
            buckets=_URL_LEFT_BUCKETS,
            registry=r,
        )
        self.handler_runs = Counter(
            "bfl_hooks_handler_runs",
            "Handler runs, by handler and outcome.",
            ["handler", "outcome"],
            registry=r,
        )
        self.reconciles = Counter(
            "bfl_hooks_reconcile_polls",
            "Polls of tasks whose webhook did not come, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.queue_depth = Gauge("bfl_hooks_queue_depth", "Jobs queued or running.", registry=r)
        self.dead_jobs = Gauge("bfl_hooks_dead_jobs", "Jobs in the dead state.", registry=r)
