"""`--metrics-addr HOST:PORT`: Prometheus metrics (prometheus-client) over a tiny trio HTTP
endpoint.

Nothing is counted twice: a custom collector reads the sessions' own counters at scrape
time (`FigureSource.all_figures()`), so the data path carries no metrics code. Only the
handshake durations are observed as they happen, into a histogram. The endpoint runs in the
trio thread (not prometheus-client's HTTP thread), so a scrape reads the counters without
racing the tasks that write them. Counters are per session: after a reconnect they start
from zero, which Prometheus' `rate()` treats as a counter reset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import trio
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from trivpn.errors import ConfigError
from trivpn.observe.figures import SessionFigures

__all__ = ["CONTENT_TYPE", "FigureSource", "Metrics", "serve_metrics"]

log = logging.getLogger("trivpn")
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST = 8192
#: Seconds a scraper gets to send its request, and again to take the answer: a reader
#: that stalls is dropped instead of holding its file descriptor for ever.
REQUEST_SECONDS = 5.0
SEND_SECONDS = 5.0
#: Handshakes take from milliseconds (loopback) to many seconds (a slow auth script)
HANDSHAKE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class FigureSource(Protocol):
    """What the metrics read: a client's one session, or a server's clients."""

    is_server: bool
    on_handshake: Callable[[float], None]

    def all_figures(self) -> Sequence[SessionFigures]: ...


class _Collector(Collector):
    def __init__(self, source: FigureSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        figures = self._source.all_figures()
        labels = ["client", "client_id"] if self._source.is_server else []

        def label(fig: SessionFigures) -> list[str]:
            return [fig.common_name, str(fig.client_id)] if self._source.is_server else []

        bytes_ = CounterMetricFamily("trivpn_bytes", "Data-channel payload bytes", labels=[*labels, "direction"])
        packets = CounterMetricFamily("trivpn_packets", "Data-channel packets", labels=[*labels, "direction"])
        drops = CounterMetricFamily("trivpn_dropped_packets", "Packets dropped, by reason", labels=[*labels, "reason"])
        renegs = CounterMetricFamily("trivpn_renegotiations", "Key renegotiations", labels=labels)
        key_age = GaugeMetricFamily("trivpn_key_age_seconds", "Age of the current data key", labels=labels)
        for fig in figures:
            lv = label(fig)
            bytes_.add_metric([*lv, "in"], fig.bytes_in)
            bytes_.add_metric([*lv, "out"], fig.bytes_out)
            packets.add_metric([*lv, "in"], fig.packets_in)
            packets.add_metric([*lv, "out"], fig.packets_out)
            for reason, count in sorted(fig.drops.items()):
                drops.add_metric([*lv, reason], count)
            renegs.add_metric(lv, fig.renegotiations)
            if fig.key_age is not None:
                key_age.add_metric(lv, fig.key_age)
        yield from (bytes_, packets, drops, renegs, key_age)
        if self._source.is_server:
            yield GaugeMetricFamily("trivpn_connected_clients", "Clients with a session", value=len(figures))
        else:
            yield GaugeMetricFamily("trivpn_tunnel_up", "1 while the tunnel is up", value=len(figures))


class Metrics:
    """A registry with the collector and the handshake histogram for one instance."""

    def __init__(self, source: FigureSource) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(source))
        #: answers dropped because the scraper did not read them within SEND_SECONDS
        self.send_timeouts = 0
        self.handshake = Histogram(
            "trivpn_handshake_duration_seconds",
            "From the session's first packet to the tunnel up (client) or the client ready (server)",
            buckets=HANDSHAKE_BUCKETS, registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def _handle(metrics: Metrics, stream: trio.abc.Stream) -> None:
    request = b""
    with trio.move_on_after(REQUEST_SECONDS):
        while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            request += chunk
    line = request.split(b"\r\n", 1)[0].split()
    if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] in (b"/metrics", b"/"):
        body, status, ctype = metrics.render(), b"200 OK", CONTENT_TYPE
    else:
        body, status, ctype = b"not found\n", b"404 Not Found", b"text/plain"
    head = b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (
        status, ctype, len(body),
    )
    try:
        with trio.move_on_after(SEND_SECONDS) as scope:
            await stream.send_all(head + body)
        if scope.cancelled_caught:
            metrics.send_timeouts += 1  # counted only: who scrapes is not worth a log line
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


def _host_port(host: str, port: int) -> str:
    """`host:port`, an IPv6 host in brackets (as a URL and `--metrics-addr` want it)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve_metrics(
    source: FigureSource, host: str, port: int,
    *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `/metrics` for `source` on HOST:PORT; `source.on_handshake` feeds the histogram."""
    metrics = Metrics(source)
    source.on_handshake = metrics.handshake.observe
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ConfigError(f"--metrics-addr: cannot listen on {_host_port(host, port)}: {exc.strerror or exc}") from None
    log.info("metrics on http://%s/metrics", _host_port(host, listeners[0].socket.getsockname()[1]))

    async def handler(stream: trio.SocketStream) -> None:
        await _handle(metrics, stream)

    await trio.serve_listeners(handler, listeners, task_status=task_status)
