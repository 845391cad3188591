"""`python -m trivpn.bench profile --quick` runs end to end and reports every stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trivpn.bench.__main__ import BENCHMARKS
from trivpn.bench.profile import main, parse_args

STAGES = {
    "aead-seal", "aead-open", "encrypt", "decrypt", "udp-send", "udp-recv", "tun-write",
    "tun-read", "loop-up", "loop-down", "loop-both", "loop-up 2t", "loop-down 2t",
    "loop-both 2t", "python-encrypt", "python-decrypt", "overhead-up",
    "overhead-down",
}
LONE = {"lone-up hot", "lone-down hot", "lone-up cold", "lone-down cold", "relay hot",
        "relay cold", "rtt hot", "rtt cold", "lone-up cold lowlat", "lone-down cold lowlat",
        "rtt cold lowlat", "lone-up hot 2t", "lone-down hot 2t", "lone-up cold 2t",
        "lone-down cold 2t", "rtt hot 2t", "rtt cold 2t"}


def test_quick_profile_reports_every_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "profile.json"
    assert main(["--quick", "--gap", "1", "--low-latency", "--other-layout", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    rows = {r["stage"]: r for r in doc["rows"]}
    assert set(rows) == STAGES
    for name in STAGES - {"python-encrypt", "python-decrypt", "overhead-up", "overhead-down"}:
        assert rows[name]["cpu_ns"] > 0 and rows[name]["wall_ns"] > 0, name
    assert set(doc["lone_us"]) == LONE
    assert all(v["p50"] > 0 and v["n"] == 5 for v in doc["lone_us"].values())
    assert set(doc["cold_cpu_pct"]) == {"default", "lowlat", "2t"}
    assert "loop-up" in capsys.readouterr().out


def test_profile_is_registered_and_checks_arguments() -> None:
    assert BENCHMARKS["profile"][0] == "trivpn.bench.profile"
    for argv in (["--batch", "0"], ["--only", "nothing"], ["--size", "5"]):
        with pytest.raises(SystemExit) as exc:
            parse_args(argv)
        assert exc.value.code == 2


def test_ab_adds_a_baseline_client_importing_from_another_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trivpn.bench import ab, vpn

    for name in ("CLIENTS", "_client_spec", "_warm_bytecode"):
        monkeypatch.setattr(vpn, name, getattr(vpn, name))
    monkeypatch.setitem(vpn.CLIENT_FLAGS, ab.BASE, [])
    monkeypatch.setitem(vpn.CLIENT_FLAGS, "trivpn-1t", [])
    ab.install(tmp_path, {"trivpn-1t": ("TRIVPN_DATA_THREADS", "1")})
    plan = vpn.parse_args(["--quick", "--clients", "trivpn,trivpn-base,trivpn-1t"])
    cell = vpn.Cell("udp", "AES-256-GCM")
    base = vpn._client_spec(ab.BASE, cell, tmp_path / "c.ovpn", "10.8.0.1", plan)
    ours = vpn._client_spec("trivpn", cell, tmp_path / "c.ovpn", "10.8.0.1", plan)
    assert base["env"]["PYTHONPATH"] == str(tmp_path) and base["env"]["PYTHONSAFEPATH"] == "1"
    assert "PYTHONPATH" not in ours["env"] and base["argv"] == ours["argv"]
    one = vpn._client_spec("trivpn-1t", cell, tmp_path / "c.ovpn", "10.8.0.1", plan)
    assert one["env"]["TRIVPN_DATA_THREADS"] == "1" and one["argv"] == ours["argv"]
    assert ab.main(["--base", str(tmp_path / "nowhere")]) == 2
    assert ab.main(["--variant", "nocolon"]) == 2
    assert ab.main([]) == 2


def test_the_baseline_really_imports_from_its_tree_even_from_a_checkout(tmp_path: Path) -> None:
    """`python -m` puts the working directory first on sys.path: run from this checkout,
    a child given only PYTHONPATH=base would import this checkout's trivpn."""
    import subprocess
    import sys

    from trivpn.bench import ab

    (tmp_path / "trivpn").mkdir()
    (tmp_path / "trivpn" / "__init__.py").write_text("")
    (tmp_path / "trivpn" / "where.py").write_text("print(__file__)\n")
    checkout = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-m", "trivpn.where"], cwd=checkout, text=True,
                         capture_output=True, timeout=60, env={**ab.base_env(tmp_path)})
    assert out.stdout.strip() == str(tmp_path / "trivpn" / "where.py"), out.stderr
