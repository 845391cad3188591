"""`bench rtt`'s pure parts: argument checks, the summary's ratios, the table."""

from __future__ import annotations

import pytest

from trivpn.bench import pairrtt


def _run(client: str, rnd: int, rtts: list[float], ok: bool = True) -> dict[str, object]:
    return {"client": client, "round": rnd, "ok": ok, "rtt_ms": rtts, "idle_cpu_pct": 1.0}


def test_summary_pairs_the_rounds() -> None:
    runs = [
        _run("trivpn", 0, [0.3, 0.4, 0.5]), _run("openvpn", 0, [0.2, 0.2, 0.2]),
        _run("trivpn", 1, [0.6, 0.6, 0.6]), _run("openvpn", 1, [0.3, 0.4, 0.5]),
        _run("trivpn", 2, [], ok=False), _run("openvpn", 2, [0.1, 0.1, 0.1]),
    ]
    s = pairrtt.summarize(runs, ("trivpn", "openvpn"))
    # only rounds where both measured count: round 2 is left out for both
    assert s["rounds_paired"] == 2
    assert s["trivpn"]["echoes"] == 6 and s["openvpn"]["echoes"] == 6
    assert s["trivpn"]["round_p50_ms"] == [0.4, 0.6]
    assert s["round_ratios_p50"] == [2.0, 1.5]
    assert s["ratio_p50"] == round(0.5 / 0.2, 3)  # nearest-rank p50 of all six echoes each
    table = pairrtt.format_table({"udp/AES-256-GCM": s}, ("trivpn", "openvpn"))
    assert "| udp/AES-256-GCM | 0.50 / 0.60 | 0.20 / 0.50 | 2.50× | 2.00, 1.50 |" in table


def test_summary_without_measurements_has_no_ratio() -> None:
    s = pairrtt.summarize([_run("trivpn", 0, [], ok=False)], ("trivpn", "openvpn"))
    assert s["ratio_p50"] is None and s["round_ratios_p50"] == []
    assert "—" in pairrtt.format_table({"udp/AES-256-GCM": s}, ("trivpn", "openvpn"))


@pytest.mark.parametrize(("argv", "message"), [
    (["--clients", "trivpn"], "two different names"),
    (["--clients", "trivpn,trivpn"], "two different names"),
    (["--clients", "trivpn,wireguard"], "two different names"),
    (["--cells", "udp-aes-128-cbc"], "unknown cell"),
    (["--rounds", "0"], "--rounds must be"),
    (["--pings", "5"], "--pings must be"),
    (["--variant", "nope"], "expected trivpn-NAME:VAR=VALUE"),
])
def test_bad_arguments_are_one_line_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        pairrtt.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_quick_plan() -> None:
    plan, json_path = pairrtt.parse_args(["--quick", "--cells", "tcp-chacha20-poly1305"])
    assert (plan.rounds, plan.pings) == (1, 30)
    assert [c.name for c in plan.cells] == ["tcp/CHACHA20-POLY1305"]
    assert plan.clients == ("trivpn", "openvpn") and json_path is None
