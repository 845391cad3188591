"""The benchmark must not rot: its quickest mode, one cell, both clients, real server.

Figures are not asserted (speed belongs in the benchmark); only that every measurement was
taken, the JSON/table files were written, and nothing was left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

#: Bound on the whole benchmark run (it normally takes about 15 s).
BENCH_TIMEOUT = 120


def _bench_namespaces(prefix: str) -> set[str]:
    """Namespaces a benchmark names with `prefix` (other tests' namespaces may come and go
    meanwhile when suites run side by side, so only the benchmark's own are compared)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith(prefix)}


def test_bench_vpn_quick_one_cell(tmp_path: Path) -> None:
    before = _bench_namespaces("tvb-")
    r = subprocess.run(
        [sys.executable, "-m", "trivpn.bench", "vpn", "--quick", "--seconds", "1",
         "--cells", "udp-aes-256-gcm", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=BENCH_TIMEOUT,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads((tmp_path / "bench-vpn.json").read_text())
    assert doc["plan"]["cells"] == ["udp/AES-256-GCM"]
    runs = doc["runs"]
    assert sorted(run["client"] for run in runs) == ["openvpn", "trivpn"]
    for run in runs:
        assert run["ok"], run
        assert run["tx_mbps"] > 0 and run["rx_mbps"] > 0, run
        assert 0 < run["start_to_ping_s"] < 30, run
        assert run["rtt_idle_ms"] and run["rtt_load_ms"], run
        assert run["idle_cpu_pct"] is not None and run["idle_cpu_pct"] >= 0, run
        assert run["peak_rss_mb"] > 0 and run["moved_bytes"] > 0, run
        # a UDP cell counts what reached each receiving socket and what it dropped
        assert run["server_udp_in"] > 0 and run["client_udp_in"] > 0, run
        assert run["server_udp_drops"] >= 0 and run["client_udp_drops"] >= 0, run
        assert run["retransmits_up"] is None or run["retransmits_up"] >= 0, run
        # the server's CPU in each direction: it moved the same data, so it worked
        assert run["server_cpu_up_pct"] > 0 and run["server_cpu_down_pct"] > 0, run
        # the client's own CPU per direction and its busiest thread's share of a core
        assert run["cpu_up_s"] > 0 and run["cpu_down_s"] > 0 and run["up_bytes"] > 0, run
        assert run["top_thread_up_pct"] > 0 and run["top_thread_down_pct"] > 0, run
        assert 0 <= run["machine_idle_up_pct"] <= 100 and 0 <= run["machine_idle_down_pct"] <= 100
    medians = doc["results"]["udp/AES-256-GCM"]["medians"]
    assert set(medians) == {"trivpn", "openvpn"}
    assert doc["results"]["udp/AES-256-GCM"]["ratios"]["tx_mbps"] > 0
    assert "| udp/AES-256-GCM |" in (tmp_path / "bench-vpn.md").read_text()
    assert _bench_namespaces("tvb-") <= before  # the benchmark's own namespaces are gone


def test_bench_server_quick(tmp_path: Path) -> None:
    """`bench server --quick`: both servers, one iperf3 client, 20 idle clients, every figure taken."""
    before = _bench_namespaces("tb-")
    r = subprocess.run(
        [sys.executable, "-m", "trivpn.bench", "server", "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=BENCH_TIMEOUT,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads((tmp_path / "bench-server.json").read_text())
    assert doc["machine"]["commit"]
    for kind in ("trivpn", "openvpn"):
        res = doc["results"][kind]
        assert res["ok"], res
        idle = res["idle"]
        assert idle["ok"] and idle["clients"] == 20 and idle["failures"] == [], idle
        assert idle["clients_per_s"] > 0 and idle["rss_after_kb"] > 0, idle
        (cell,) = res["throughput"]
        assert cell["clients"] == 1 and cell["up_mbps"] > 0 and cell["down_mbps"] > 0, cell
    assert "| 20 idle clients: set-up rate, clients/s |" in (tmp_path / "bench-server.md").read_text()
    assert _bench_namespaces("tb-") <= before


def test_bench_rtt_quick_one_cell(tmp_path: Path) -> None:
    """`bench rtt --quick`: both clients connected at once, both pinged, a ratio per round."""
    before = _bench_namespaces("tvr-")
    out = tmp_path / "rtt.json"
    r = subprocess.run(
        [sys.executable, "-m", "trivpn.bench", "rtt", "--quick", "--cells", "udp-aes-256-gcm",
         "--json", str(out)],
        capture_output=True, text=True, timeout=BENCH_TIMEOUT,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(out.read_text())
    runs = doc["runs"]
    assert sorted(run["client"] for run in runs) == ["openvpn", "trivpn"]
    for run in runs:
        assert run["ok"], run
        assert len(run["rtt_ms"]) >= 25 and all(x > 0 for x in run["rtt_ms"]), run
        assert 0 < run["start_to_ping_s"] < 30, run
    result = doc["results"]["udp/AES-256-GCM"]
    assert result["trivpn"]["echoes"] == len(runs[0]["rtt_ms"]) or result["openvpn"]["echoes"] > 0
    assert result["ratio_p50"] > 0 and len(result["round_ratios_p50"]) == 1
    assert "| udp/AES-256-GCM |" in r.stdout
    assert _bench_namespaces("tvr-") <= before  # its namespaces (and the second client's) are gone
