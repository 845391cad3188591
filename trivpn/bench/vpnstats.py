"""The statistics of `bench vpn`: per-run figures from a probe result, medians per client,
trivpn/OpenVPN ratios, and what each metric means (label, unit, which way is better).

Pure functions over the probe's JSON, apart from the running (`trivpn.bench.vpn`), so the
same figures can be recomputed from a committed docs/bench/*.json.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

__all__ = ["METRICS", "drop_pct", "per_gb", "percentile", "run_metrics", "summarize"]


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def _median(values: list[float | None]) -> float | None:
    vs = [v for v in values if v is not None]
    return statistics.median(vs) if vs else None


#: metric → (label, unit, higher is better)
METRICS: dict[str, tuple[str, str, bool]] = {
    "tx_mbps": ("throughput client→server", "Mbit/s", True),
    "rx_mbps": ("throughput server→client (-R)", "Mbit/s", True),
    "start_to_ping_s": ("process start → first ping reply", "s", False),
    "handshake_s": ("handshake (connect → tunnel up)", "s", False),
    "rtt_idle_p50": ("ping RTT idle p50", "ms", False),
    "rtt_idle_p99": ("ping RTT idle p99", "ms", False),
    "idle_cpu_pct": ("client CPU during the idle pings", "% of a core", False),
    "rtt_load_p50": ("ping RTT under load p50", "ms", False),
    "rtt_load_p99": ("ping RTT under load p99", "ms", False),
    "cpu_s_per_gb": ("client CPU per GB moved", "s/GB", False),
    "cpu_up_s_per_gb": ("client CPU per GB, upload only", "s/GB", False),
    "cpu_down_s_per_gb": ("client CPU per GB, download only", "s/GB", False),
    # near 100 %, one thread of the client bounds that direction
    "top_thread_up_pct": ("client's busiest thread during the upload", "% of a core", False),
    "top_thread_down_pct": ("client's busiest thread during the download", "% of a core", False),
    # near 0, the cores are full: what the client spends, the server and iperf3 lack
    "machine_idle_up_pct": ("machine idle during the upload", "% of all cores", True),
    "machine_idle_down_pct": ("machine idle during the download", "% of all cores", True),
    "peak_rss_mb": ("client peak RSS", "MB", False),
    "udp_drops_up_pct": ("UDP: datagrams the server's socket dropped during the upload", "%", False),
    "udp_drops_down_pct": ("UDP: datagrams the client's socket dropped during the download", "%", False),
    "retrans_up": ("inner TCP retransmits during the upload", "per run", False),
    "retrans_down": ("inner TCP retransmits during the download", "per run", False),
    # the server is one thread: near 100 % it, not the client, bounds that direction
    "server_cpu_up_pct": ("OpenVPN server's CPU during the upload", "% of a core", False),
    "server_cpu_down_pct": ("OpenVPN server's CPU during the download", "% of a core", False),
}


def drop_pct(delivered: int | None, dropped: int | None) -> float | None:
    """Dropped datagrams in % of those that reached the receiving socket's queue."""
    if delivered is None or dropped is None or delivered + dropped <= 0:
        return None
    return 100 * dropped / (delivered + dropped)


def run_metrics(run: dict[str, Any]) -> dict[str, float | None]:
    """The per-run figures the table reports, derived from one probe result."""
    moved = run.get("moved_bytes") or 0
    return {
        "tx_mbps": run.get("tx_mbps"),
        "rx_mbps": run.get("rx_mbps"),
        "start_to_ping_s": run.get("start_to_ping_s"),
        "handshake_s": run.get("handshake_s"),
        "rtt_idle_p50": percentile(run.get("rtt_idle_ms") or [], 50),
        "rtt_idle_p99": percentile(run.get("rtt_idle_ms") or [], 99),
        "idle_cpu_pct": run.get("idle_cpu_pct"),
        "rtt_load_p50": percentile(run.get("rtt_load_ms") or [], 50),
        "rtt_load_p99": percentile(run.get("rtt_load_ms") or [], 99),
        "cpu_s_per_gb": per_gb(run.get("cpu_s"), moved),
        "cpu_up_s_per_gb": per_gb(run.get("cpu_up_s"), run.get("up_bytes") or 0),
        "cpu_down_s_per_gb": per_gb(run.get("cpu_down_s"), moved - (run.get("up_bytes") or moved)),
        "top_thread_up_pct": _float(run.get("top_thread_up_pct")),
        "top_thread_down_pct": _float(run.get("top_thread_down_pct")),
        "machine_idle_up_pct": _float(run.get("machine_idle_up_pct")),
        "machine_idle_down_pct": _float(run.get("machine_idle_down_pct")),
        "peak_rss_mb": run.get("peak_rss_mb"),
        "udp_drops_up_pct": drop_pct(run.get("server_udp_in"), run.get("server_udp_drops")),
        "udp_drops_down_pct": drop_pct(run.get("client_udp_in"), run.get("client_udp_drops")),
        "retrans_up": _float(run.get("retransmits_up")),
        "retrans_down": _float(run.get("retransmits_down")),
        "server_cpu_up_pct": _float(run.get("server_cpu_up_pct")),
        "server_cpu_down_pct": _float(run.get("server_cpu_down_pct")),
    }


def per_gb(cpu_s: Any, moved: int) -> float | None:
    """CPU seconds per GB moved; None without a CPU figure or bytes."""
    return cpu_s / (moved / 1e9) if isinstance(cpu_s, (int, float)) and moved > 0 else None


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) else None


def summarize(runs: list[dict[str, Any]], clients: tuple[str, ...]) -> dict[str, Any]:
    """Medians per client over the successful runs, and trivpn/OpenVPN ratios."""
    medians: dict[str, dict[str, float | None]] = {}
    for client in clients:
        per_run = [run_metrics(r) for r in runs if r["client"] == client and r.get("ok")]
        medians[client] = {m: _median([pr[m] for pr in per_run]) for m in METRICS}
    ratios: dict[str, float | None] = {}
    if "trivpn" in medians and "openvpn" in medians:
        for m in METRICS:
            a, b = medians["trivpn"][m], medians["openvpn"][m]
            ratios[m] = (a / b) if a is not None and b else None
    return {"medians": medians, "ratios": ratios}
