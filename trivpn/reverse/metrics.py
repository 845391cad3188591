"""Counters for the reverse tunnel, the exit summary, and the Prometheus export.

Each session owns one `Metrics` object (plain counters, no locks: trio runs one task at a
time). The relay keeps them per client name and folds ended sessions into a per-client
total, so `/metrics` and the summary show per-client figures without double bookkeeping:
the Prometheus collector reads these objects when scraped. prometheus-client is imported
only when an endpoint is asked for.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import field
from typing import TYPE_CHECKING

from trivpn.records import dataclass
from trivpn.reverse.httplog import HttpExchange

if TYPE_CHECKING:  # prometheus-client is imported only when an endpoint is asked for
    from prometheus_client.core import CollectorRegistry, Metric


@dataclass(slots=True)
class Metrics:
    connections: int = 0  # tunnel connections (sessions) established
    streams_total: int = 0
    streams_active: int = 0
    streams_refused: int = 0
    bytes_in: int = 0  # into the tunnel from sockets on this side
    bytes_out: int = 0  # out of the tunnel to sockets on this side
    http_requests: int = 0
    http_status: Counter[int] = field(default_factory=Counter)
    latency_sum: float = 0.0
    latency_min: float = float("inf")
    latency_max: float = 0.0
    started: float = field(default_factory=time.time)
    state: str = "INIT"
    rtt: float = 0.0
    ended: float | None = None  # one session's metrics: when it ended
    #: a running total (per-client totals, merged views): its uptime is the sum of the
    #: connected time folded into it, not the age of the object
    is_total: bool = False
    folded: float = 0.0  # seconds of sessions folded in by `add`

    def uptime(self, now: float | None = None) -> float:
        """Connected seconds: a session's age (until it ended); a total's sum."""
        if self.is_total:
            return self.folded
        end = self.ended if self.ended is not None else (time.time() if now is None else now)
        return max(0.0, end - self.started) + self.folded

    def record_http(self, ex: HttpExchange) -> None:
        self.http_requests += 1
        self.http_status[ex.status] += 1
        self.latency_sum += ex.latency
        self.latency_min = min(self.latency_min, ex.latency)
        self.latency_max = max(self.latency_max, ex.latency)

    def add(self, other: Metrics, now: float | None = None) -> None:
        """Fold an ended session into a running total (its time too, if we are one)."""
        if self.is_total:
            self.folded += other.uptime(now)
        self.connections += other.connections
        self.streams_total += other.streams_total
        self.streams_refused += other.streams_refused
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.http_requests += other.http_requests
        self.http_status.update(other.http_status)
        self.latency_sum += other.latency_sum
        self.latency_min = min(self.latency_min, other.latency_min)
        self.latency_max = max(self.latency_max, other.latency_max)

    def summary(self, title: str, now: float | None = None) -> str:
        now = time.time() if now is None else now
        up = self.uptime(now)
        lines = [
            f"── {title} ──",
            f"  uptime        {up:.1f} s   state {self.state}",
            f"  connections   {self.connections}",
            f"  streams       {self.streams_total} total, {self.streams_active} active, "
            f"{self.streams_refused} refused",
            f"  bytes         {self.bytes_in} in, {self.bytes_out} out, "
            f"{self.bytes_in + self.bytes_out} total",
        ]
        if self.http_requests:
            avg = self.latency_sum / self.http_requests * 1000
            codes = ", ".join(f"{c}×{n}" for c, n in sorted(self.http_status.items()))
            lines.append(f"  http          {self.http_requests} requests ({codes})")
            lines.append(
                f"  latency       avg {avg:.1f} ms, min {self.latency_min * 1000:.1f} ms, "
                f"max {self.latency_max * 1000:.1f} ms"
            )
        return "\n".join(lines)


def merged(items: Iterable[Metrics], now: float | None = None) -> Metrics:
    """One view of several: counters summed, uptime the connected time of all of them."""
    total = Metrics(is_total=True)
    for m in items:
        total.add(m, now)
        total.streams_active += m.streams_active
    return total


def make_registry(
    source: Callable[[], dict[str, list[Metrics]]],
    routed: Callable[[], tuple[int, int]] | None = None,
) -> CollectorRegistry:
    """A prometheus CollectorRegistry reading live `Metrics` (grouped by client name), and
    with `routed` (the name-routed HTTP/HTTPS ports: refused, evicted) how many public
    connections those ports turned away, so that a flood is seen on a dashboard."""
    from prometheus_client.core import (
        CollectorRegistry,
        CounterMetricFamily,
        GaugeMetricFamily,
    )

    class _Collector:
        def collect(self) -> Iterator[Metric]:
            groups = source()
            fams: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
                "conn": CounterMetricFamily(
                    "trivpn_reverse_connections", "Tunnel sessions established", labels=["client"]
                ),
                "st": CounterMetricFamily(
                    "trivpn_reverse_streams", "Streams opened", labels=["client"]
                ),
                "sa": GaugeMetricFamily(
                    "trivpn_reverse_streams_active", "Streams open now", labels=["client"]
                ),
                "bi": CounterMetricFamily(
                    "trivpn_reverse_bytes_in", "Bytes into the tunnel", labels=["client"]
                ),
                "bo": CounterMetricFamily(
                    "trivpn_reverse_bytes_out", "Bytes out of the tunnel", labels=["client"]
                ),
                "hr": CounterMetricFamily(
                    "trivpn_reverse_http_requests",
                    "HTTP requests seen",
                    labels=["client", "status"],
                ),
                "ls": CounterMetricFamily(
                    "trivpn_reverse_http_latency_seconds",
                    "Sum of HTTP request latencies",
                    labels=["client"],
                ),
                "up": GaugeMetricFamily(
                    "trivpn_reverse_session_uptime_seconds",
                    "Uptime of the oldest live session",
                    labels=["client"],
                ),
            }
            now = time.time()
            for name, ms in sorted(groups.items()):
                m = merged(ms)
                fams["conn"].add_metric([name], m.connections)
                fams["st"].add_metric([name], m.streams_total)
                fams["sa"].add_metric([name], m.streams_active)
                fams["bi"].add_metric([name], m.bytes_in)
                fams["bo"].add_metric([name], m.bytes_out)
                for code, n in sorted(m.http_status.items()):
                    fams["hr"].add_metric([name, str(code)], n)
                fams["ls"].add_metric([name], m.latency_sum)
                live = [x for x in ms if x.state not in ("CLOSED", "TOTAL")]
                fams["up"].add_metric([name], max((now - x.started for x in live), default=0.0))
            yield from fams.values()
            if routed is not None:
                refused, evicted = routed()
                yield CounterMetricFamily(
                    "trivpn_reverse_routed_refused",
                    "Connections the name-routed ports refused (per-source cap, full table, bad head)",
                    value=refused,
                )
                yield CounterMetricFamily(
                    "trivpn_reverse_routed_evicted",
                    "Unrouted connections closed to make room for a source holding fewer",
                    value=evicted,
                )

    registry = CollectorRegistry()
    registry.register(_Collector())
    return registry


def render(registry: CollectorRegistry) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(registry)
