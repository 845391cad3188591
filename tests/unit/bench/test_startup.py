"""`python -m trivpn.bench startup --quick` runs end to end and reports every promised figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trivpn.bench.__main__ import BENCHMARKS
from trivpn.bench.startup import PACKAGE_FIGURES, TREE_FIGURES, main, parse_args, plan, top_level


def test_quick_startup_reports_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "startup.json"
    assert main(["--quick", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["ok"] is True
    tree = doc["results"]["this"]
    assert set(TREE_FIGURES) <= set(tree)
    assert tree["rounds"] == 2
    for key in ("modules", "baseline_rss_mb", "import_ms", "import_ms_min", "import_cpu_ms",
                "rss_after_imports_mb", "start_to_ping_s", "peak_rss_at_ping_mb"):
        assert isinstance(tree[key], (int, float)), key
    rows = {p["package"]: p for p in tree["packages"]}
    assert {"stdlib", "trio", "cryptography", "OpenSSL", "trivpn"} <= set(rows)
    # trivpn.lazystdlib + trivpn.digests: connect never loads the system's OpenSSL
    assert "ssl" not in rows and tree["system_openssl_modules"] == []
    for row in rows.values():
        assert set(PACKAGE_FIGURES) <= set(row), row
    assert isinstance(tree["unused_modules"], list)
    assert "| trio |" in capsys.readouterr().out


def test_startup_is_registered_and_checks_arguments(tmp_path: Path) -> None:
    assert BENCHMARKS["startup"][0] == "trivpn.bench.startup"
    for argv in (["--rounds", "0"], ["--base", str(tmp_path)], ["--proto", "quic"]):
        with pytest.raises(SystemExit) as exc:
            parse_args(argv)
        assert exc.value.code == 2


def test_plan_orders_groups_and_appends_modules_importtime_missed() -> None:
    order = ["trio._core", "_ssl", "ssl", "json", "trivpn.errors", "asyncio.events", "trio", "trivpn"]
    states = {m: "used" for m in [*order, "trivpn.cli", "trivpn.bench.startup"]}
    steps = plan(order, states)
    assert [g for g, _m in steps] == ["ssl", "ssl", "stdlib", "asyncio", "trio", "trio",
                                      "trivpn", "trivpn", "trivpn"]
    assert steps[-1] == ("trivpn", "trivpn.cli")  # imported through importlib: no importtime line
    assert top_level("_asyncio") == "asyncio" and top_level("cryptography.x509") == "cryptography"
