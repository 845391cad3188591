"""The benchmark's pure parts: percentiles, medians, ratios, table, argument checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from trivpn.bench import machine, pairrtt, vpn
from trivpn.bench.__main__ import main as bench_main
from trivpn.bench.probe import Result, _checksum, _echo, missing_measurements, udp_counters


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


def test_openvpn_gets_tcp_nodelay_on_tcp_only_and_the_default_runs_beside_it(tmp_path: Path) -> None:
    plan = vpn.parse_args(["--quick"])
    tcp, udp = vpn.Cell("tcp", "AES-256-GCM"), vpn.Cell("udp", "AES-256-GCM")
    assert plan.clients == ("trivpn", "openvpn", "openvpn-default")
    assert vpn.cell_clients(udp, plan.clients) == ("trivpn", "openvpn")
    assert vpn.cell_clients(tcp, plan.clients) == plan.clients
    profile = tmp_path / "c.ovpn"
    fair = vpn._client_spec("openvpn", tcp, profile, "10.8.0.1", plan)["argv"]
    shipped = vpn._client_spec("openvpn-default", tcp, profile, "10.8.0.1", plan)["argv"]
    over_udp = vpn._client_spec("openvpn", udp, profile, "10.8.0.1", plan)["argv"]
    assert fair[-2:] == ["--socket-flags", "TCP_NODELAY"]
    assert "--socket-flags" not in shipped and "--socket-flags" not in over_udp


def test_the_reference_servers_tcp_socket_is_as_shipped_or_nodelay_per_benchmark(tmp_path: Path) -> None:
    from trivpn.testing.ovpn_server import server_config

    tcp, udp = vpn.Cell("tcp", "CHACHA20-POLY1305"), vpn.Cell("udp", "AES-256-GCM")
    over_tcp = server_config(vpn.server_options(tcp, nagle=False), dev="tun9", local="10.0.0.1", workdir=tmp_path)
    over_udp = server_config(vpn.server_options(udp, nagle=False), dev="tun9", local="10.0.0.1", workdir=tmp_path)
    assert "socket-flags TCP_NODELAY" in over_tcp.splitlines()
    assert "proto tcp-server" in over_tcp and "data-ciphers CHACHA20-POLY1305" in over_tcp
    assert "socket-flags" not in over_udp
    shipped = server_config(vpn.server_options(tcp, nagle=True), dev="tun9", local="10.0.0.1", workdir=tmp_path)
    assert "socket-flags" not in shipped
    # bench vpn keeps the server as shipped (throughput comparable with earlier tables) ...
    assert vpn.parse_args(["--quick"]).server_nagle is True
    assert vpn.parse_args(["--quick", "--server-tcp", "nodelay"]).server_nagle is False
    # ... bench rtt turns Nagle off (its 24 ms stalls hid the clients' own round trips)
    assert pairrtt.parse_args(["--quick"])[0].server_nagle is False
    assert pairrtt.parse_args(["--quick", "--server-tcp", "shipped"])[0].server_nagle is True
    with pytest.raises(SystemExit):
        vpn.parse_args(["--server-tcp", "fast"])
    # the JSON records what the server ran with
    assert vpn.parse_args(["--quick"]).server_tcp_lines == []
    assert pairrtt.parse_args(["--quick"])[0].server_tcp_lines == ["socket-flags TCP_NODELAY"]


def test_a_run_missing_a_promised_measurement_is_not_ok() -> None:
    res = Result(client="trivpn", start_to_ping_s=0.2, tx_mbps=1.0, rx_mbps=1.0, rtt_idle_ms=[0.5],
                 idle_cpu_pct=1.0, moved_bytes=10, peak_rss_mb=30.0, top_thread_up_pct=50.0, top_thread_down_pct=60.0,
                 machine_idle_up_pct=5.0, machine_idle_down_pct=0.0)
    assert missing_measurements(res) == ["rtt_load_ms (no sample while the load ran)"]
    res.rtt_load_ms = [0.9]
    assert missing_measurements(res) == []
    res.tx_mbps = None
    assert missing_measurements(res) == ["tx_mbps"]


def test_table_shows_a_dash_for_a_client_that_did_not_run_in_a_cell() -> None:
    s = vpn.summarize([_run("trivpn", 100), _run("openvpn", 100)], ("trivpn", "openvpn"))
    table = vpn.format_table({"udp/X": s}, ("trivpn", "openvpn", "openvpn-default"))
    assert "| udp/X | throughput client→server (Mbit/s) | 100 | 100 | — | 1.00× |" in table


def test_the_machine_facts_time_the_bare_interpreter_and_warn_when_it_is_slow() -> None:
    """start → ping includes the interpreter's own start; a site-packages `.pth` can make
    that several times slower than a clean venv, so the bench measures and flags it."""
    start = machine.interpreter_start_ms(runs=2)
    assert start is not None and 0 < start < 10_000
    facts = {"cpu": "x", "cores": 2, "memory": "1 GiB", "kernel": "6", "python": "3.11",
             "python_executable": "/venv/bin/python", "openvpn": "OpenVPN 2.6"}
    quick = machine.machine_report(facts | {"python_start_ms": 9.0})
    assert "starts in 9.0 ms" in quick and "warning" not in quick
    slow = machine.machine_report(facts | {"python_start_ms": machine.SLOW_INTERPRETER_MS + 40})
    assert slow.splitlines()[1].startswith("warning: this Python takes")


SNMP = """Ip: Forwarding DefaultTTL
Ip: 1 64
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 95000 3 17000 1200 16990 0 0 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 0 0 0 0 0
"""


def test_udp_counters_read_delivered_and_buffer_drops_not_udplite(tmp_path: Path) -> None:
    snmp = tmp_path / "snmp"
    snmp.write_text(SNMP)
    assert udp_counters(str(snmp)) == (95000, 16990)
    snmp.write_text("Ip: a\nIp: 1\n")
    with pytest.raises(RuntimeError, match="no Udp counters"):
        udp_counters(str(snmp))


def test_udp_counters_of_this_namespace_are_readable() -> None:
    delivered, dropped = udp_counters("/proc/self/net/snmp")
    assert delivered >= 0 and dropped >= 0


def test_drops_are_a_share_of_what_reached_the_socket_and_missing_in_a_udp_cell_fails() -> None:
    assert vpn.drop_pct(85, 15) == 15.0
    assert vpn.drop_pct(0, 0) is None and vpn.drop_pct(None, 3) is None
    run = _run("trivpn", 100) | {"server_udp_in": 900, "server_udp_drops": 100,
                                 "client_udp_in": 1000, "client_udp_drops": 0,
                                 "retransmits_up": 42, "retransmits_down": None}
    m = vpn.run_metrics(run)
    assert m["udp_drops_up_pct"] == 10.0 and m["udp_drops_down_pct"] == 0.0
    assert m["retrans_up"] == 42.0 and m["retrans_down"] is None
    res = Result(client="trivpn", start_to_ping_s=0.2, tx_mbps=1.0, rx_mbps=1.0,
                 rtt_idle_ms=[0.5], rtt_load_ms=[0.9], idle_cpu_pct=1.0, moved_bytes=10,
                 peak_rss_mb=30.0, server_udp_in=5, server_udp_drops=0,
                 top_thread_up_pct=50.0, top_thread_down_pct=60.0,
                 machine_idle_up_pct=5.0, machine_idle_down_pct=0.0)
    assert missing_measurements(res) == []  # a TCP cell promises no UDP counts
    assert missing_measurements(res, udp=True) == ["client_udp_in", "client_udp_drops"]


def test_server_load_is_the_servers_cpu_share_of_the_wall_time_and_promised_with_a_pid() -> None:
    """The OpenVPN server is one thread: its CPU during an iperf3 run says whether the
    server, not the client, bounded that direction."""
    import os
    import time

    from trivpn.bench.probe import _ServerLoad

    assert _ServerLoad(None).pct() is None
    load = _ServerLoad(os.getpid())
    end = time.monotonic() + 0.3
    while time.monotonic() < end:  # bounded: 0.3 s of this process's own CPU
        pass
    pct = load.pct()
    assert pct is not None and 20 < pct <= 110  # ticks are 10 ms: a little over 100 can happen
    m = vpn.run_metrics(_run("trivpn", 100) | {"server_cpu_up_pct": 97.5,
                                               "server_cpu_down_pct": None})
    assert m["server_cpu_up_pct"] == 97.5 and m["server_cpu_down_pct"] is None
    res = Result(client="trivpn", start_to_ping_s=0.2, tx_mbps=1.0, rx_mbps=1.0,
                 rtt_idle_ms=[0.5], rtt_load_ms=[0.9], idle_cpu_pct=1.0, moved_bytes=10,
                 peak_rss_mb=30.0, server_cpu_up_pct=90.0,
                 top_thread_up_pct=50.0, top_thread_down_pct=60.0,
                 machine_idle_up_pct=5.0, machine_idle_down_pct=0.0)
    assert missing_measurements(res) == []
    assert missing_measurements(res, server=True) == ["server_cpu_down_pct"]


def test_the_busiest_thread_and_per_direction_cpu_are_measured_and_promised() -> None:
    """A client bound by one of its threads shows it near 100 % of a core, whatever the
    process's total; each direction gets its own CPU per GB."""
    import os
    import threading
    import time

    from trivpn.bench.probe import _ThreadLoad, thread_cpu_seconds

    load = _ThreadLoad(os.getpid())
    stop = time.monotonic() + 0.3
    spun, measured = threading.Event(), threading.Event()

    def spin() -> None:
        while time.monotonic() < stop:  # bounded: 0.3 s
            pass
        spun.set()
        measured.wait(10)  # alive while measured: /proc lists running threads only

    worker = threading.Thread(target=spin)
    worker.start()
    assert spun.wait(10)
    total, busiest = load.result()
    measured.set()
    worker.join()
    assert busiest is not None and 20 < busiest <= 110  # the new thread counts from zero
    assert total >= 0.05
    assert os.getpid() in thread_cpu_seconds(os.getpid())
    m = vpn.run_metrics(_run("trivpn", 100) | {"cpu_up_s": 2.0, "cpu_down_s": 3.0,
                                               "moved_bytes": 3_000_000_000,
                                               "up_bytes": 1_000_000_000,
                                               "top_thread_up_pct": 99.0})
    assert m["cpu_up_s_per_gb"] == 2.0 and m["cpu_down_s_per_gb"] == 1.5
    assert m["top_thread_up_pct"] == 99.0 and m["top_thread_down_pct"] is None
    assert vpn.per_gb(None, 10) is None and vpn.per_gb(1.0, 0) is None


def test_machine_idle_is_the_idle_share_of_all_ticks(tmp_path: Path) -> None:
    from trivpn.bench.probe import _MachineIdle, machine_ticks

    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n")
    assert machine_ticks(str(stat)) == (850, 1000)
    idle, total = machine_ticks()
    assert 0 <= idle <= total
    pct = _MachineIdle().pct()
    assert pct is None or 0 <= pct <= 100


def test_congestion_control_is_chosen_checked_and_recorded() -> None:
    """The inner TCP's congestion control changes what a tunnel can carry (the namespaces
    inherit the machine's default): the bench records it and can set it for iperf3."""
    offered = vpn.available_congestion()
    assert offered, "the kernel lists its congestion controls"
    plan = vpn.parse_args(["--congestion", offered[0], "--quick"])
    assert plan.congestion == offered[0]
    assert vpn.parse_args(["--quick"]).congestion is None
    with pytest.raises(SystemExit):
        vpn.parse_args(["--congestion", "no-such-algorithm"])
    assert machine.describe_machine()["tcp_congestion_control"] in offered
