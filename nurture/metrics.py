"""`GET /metrics`: the operator's numbers in Prometheus text format (prometheus-client).

Read from the store at each scrape, so every API process answers the same whatever
process did the work: emails by status, events received and delivered, how long the
oldest undelivered event has waited (dispatcher lag), leads per stage, open handoffs.
The workers' own numbers (Temporal SDK metrics: workflow task failures, activity and
schedule latencies, and `nurture_email_send` latency per provider) are exported by each
worker on NURTURE_SDK_METRICS_BIND (see nurture.temporal).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nurture import crud
from nurture.config import Settings
from nurture.db import session_scope
from nurture.models import as_utc, utcnow

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StoreCollector(Collector):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        with session_scope(self.settings.db_url) as session:
            emails = crud.email_status_counts(session=session)
            received, delivered, oldest = crud.event_counts(session=session)
            stages = crud.lead_stage_counts(session=session)
            handoffs = crud.open_handoff_count(session=session)
        by_status = GaugeMetricFamily("nurture_emails", "Email rows by status (one per lead, enrollment and step)",
                                      labels=["status"])
        for status, count in sorted(emails.items()):
            by_status.add_metric([status], count)
        yield by_status
        yield CounterMetricFamily("nurture_events_received", "Engagement events stored (API, webhook, import)",
                                  value=received)
        yield CounterMetricFamily("nurture_events_delivered", "Events a lead's workflow has taken", value=delivered)
        lag = (utcnow() - as_utc(oldest)).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily("nurture_dispatcher_lag_seconds",
                                "Age of the oldest stored event no workflow has taken yet (0: none waits)",
                                value=max(lag, 0.0))
        leads = GaugeMetricFamily("nurture_leads", "Leads per funnel stage", labels=["stage"])
        for stage, count in sorted(stages.items()):
            leads.add_metric([stage], count)
        yield leads
        yield GaugeMetricFamily("nurture_handoffs_open", "Handoffs waiting for a sales rep's answer", value=handoffs)


def registry_for(settings: Settings) -> CollectorRegistry:
    """A registry of this app's own (not the process-global one: tests run many apps)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(settings))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
