"""Read a worker's ``/metrics`` the way Prometheus would, for the demo and ``status``."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from cdcflow.naming import READINESS_PATH
from cdcflow.urls import ServiceUrl, scrub


@dataclass
class Scrape:
    """Samples of one scrape: ``value(name)`` sums over labels, ``by_label`` splits."""

    ok: bool
    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    error: str = ""

    def value(self, name: str, **labels: str) -> float:
        total = 0.0
        for sample_labels, value in self.samples.get(name, []):
            if all(sample_labels.get(key) == wanted for key, wanted in labels.items()):
                total += value
        return total

    def by_label(self, name: str, label: str) -> dict[str, float]:
        split: dict[str, float] = defaultdict(float)
        for sample_labels, value in self.samples.get(name, []):
            split[sample_labels.get(label, "")] += value
        return dict(split)

    def quantile(self, histogram: str, q: float) -> float | None:
        """Estimate a quantile from ``<histogram>_bucket`` like PromQL's histogram_quantile."""
        buckets = sorted(
            (float(labels["le"]), value)
            for labels, value in self.samples.get(f"{histogram}_bucket", [])
            if "le" in labels
        )
        if not buckets or buckets[-1][1] == 0:
            return None
        rank = q * buckets[-1][1]
        previous_bound, previous_count = 0.0, 0.0
        for bound, count in buckets:
            if count >= rank:
                if bound == float("inf"):
                    return previous_bound
                width = count - previous_count
                share = (rank - previous_count) / width if width else 1.0
                return previous_bound + (bound - previous_bound) * share
            previous_bound, previous_count = bound, count
        return previous_bound


def _request(url: str | ServiceUrl) -> urllib.request.Request:
    """A GET request; credentials in the URL become a basic-auth header (urllib
    would take them for part of the host name)."""
    parsed = url if isinstance(url, ServiceUrl) else ServiceUrl.parse(url)
    bare = ServiceUrl(
        parsed.scheme, None, None, parsed.host, parsed.port, parsed.path, parsed.query
    )
    request = urllib.request.Request(bare.reveal())
    if parsed.username is not None:
        secret = parsed.password.get_secret_value() if parsed.password else ""
        token = base64.b64encode(f"{parsed.username}:{secret}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    return request


def scrape(url: str | ServiceUrl, timeout: float = 2.0) -> Scrape:
    """Fetch and parse ``url`` (a /metrics endpoint); never raises."""
    try:
        with urllib.request.urlopen(_request(url), timeout=timeout) as response:
            text = response.read().decode("utf-8")
    except (urllib.error.URLError, OSError, ValueError) as error:
        return Scrape(ok=False, error=scrub(str(getattr(error, "reason", error))))
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((dict(sample.labels), float(sample.value)))
    return Scrape(ok=True, samples=dict(samples))


def ready(base_url: str, timeout: float = 1.0) -> bool:
    """Whether ``<base_url>/readyz`` answers 200."""
    try:
        with urllib.request.urlopen(f"{base_url}{READINESS_PATH}", timeout=timeout) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False
