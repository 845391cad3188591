"""The benchmark's pure parts: percentiles, medians, ratios, table, argument checks."""

from __future__ import annotations

import pytest

from trivpn.bench import vpn
from trivpn.bench.__main__ import main as bench_main
from trivpn.bench.probe import _checksum, _echo


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert vpn.percentile(values, 50) == 50.0
    assert vpn.percentile(values, 99) == 99.0
    assert vpn.percentile([3.0], 99) == 3.0
    assert vpn.percentile([], 50) is None


def _run(client: str, tx: float, ok: bool = True) -> dict[str, object]:
    return {
        "client": client, "ok": ok, "tx_mbps": tx, "rx_mbps": tx / 2, "start_to_ping_s": 0.1,
        "handshake_s": 0.01, "rtt_idle_ms": [1.0, 2.0], "rtt_load_ms": [3.0], "cpu_s": 2.0,
        "moved_bytes": 1_000_000_000, "peak_rss_mb": 40.0,
    }


def test_summary_takes_medians_of_successful_runs_and_ratios() -> None:
    runs = [_run("trivpn", 100), _run("trivpn", 300), _run("trivpn", 200),
            _run("trivpn", 9999, ok=False), _run("openvpn", 400)]
    s = vpn.summarize(runs, ("trivpn", "openvpn"))
    assert s["medians"]["trivpn"]["tx_mbps"] == 200
    assert s["medians"]["trivpn"]["cpu_s_per_gb"] == 2.0
    assert s["ratios"]["tx_mbps"] == 0.5
    assert s["ratios"]["peak_rss_mb"] == 1.0
    table = vpn.format_table({"udp/X": s}, ("trivpn", "openvpn"))
    assert "| udp/X | throughput client→server (Mbit/s) | 200 | 400 | 0.50× |" in table


def test_missing_client_gives_no_ratio() -> None:
    s = vpn.summarize([_run("openvpn", 400)], ("trivpn", "openvpn"))
    assert s["medians"]["trivpn"]["tx_mbps"] is None
    assert s["ratios"]["tx_mbps"] is None


def test_icmp_echo_checksum_verifies() -> None:
    pkt = _echo(0x1234, 7)
    assert pkt[0] == 8 and _checksum(pkt) == 0


@pytest.mark.parametrize("argv", [["--cells", "udp-des"], ["--rounds", "0"], ["--clients", "x"]])
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        vpn.parse_args(argv)
    assert exc.value.code == 2


def test_quick_plan_is_short() -> None:
    plan = vpn.parse_args(["--quick", "--cells", "udp-aes-256-gcm"])
    assert plan.rounds == 1 and plan.seconds == 2.0
    assert [c.name for c in plan.cells] == ["udp/AES-256-GCM"]


def test_dispatcher_reports_unknown_and_missing_benchmarks(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["nope"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err
    assert bench_main([]) == 2
