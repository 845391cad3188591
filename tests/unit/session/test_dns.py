"""DNS application: resolv.conf text, resolvectl commands, backup/restore and crash recovery."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest

from trivpn.session import dns as dnsmod
from trivpn.session.dns import (
    DnsConfigurator,
    ResolvConf,
    resolv_conf_text,
    resolvectl_commands,
    resolved_active,
)
from trivpn.session.netsettings import DnsSettings

ORIGINAL = b"# local\nsearch home.lan\nnameserver 192.168.1.1\nnameserver 192.168.1.2\noptions edns0 trust-ad\n"
SPLIT = DnsSettings(("10.8.0.53", "fd00::53"), ("corp.example",), default_route=False)
FULL = DnsSettings(("10.8.0.53",), ("corp.example",), default_route=True)


def test_resolv_conf_text_with_redirect_keeps_only_the_tunnel_servers() -> None:
    text = resolv_conf_text(ORIGINAL, FULL, "tun0").decode()
    assert text.splitlines()[1:] == [
        "search corp.example home.lan",
        "nameserver 10.8.0.53",
        "options edns0 trust-ad",
    ]
    assert "tun0" in text.splitlines()[0]


def test_resolv_conf_text_without_redirect_falls_back_to_the_old_servers() -> None:
    lines = resolv_conf_text(ORIGINAL, SPLIT, "tun0").decode().splitlines()
    assert [ln for ln in lines if ln.startswith("nameserver")] == [
        "nameserver 10.8.0.53",
        "nameserver fd00::53",
        "nameserver 192.168.1.1",  # glibc reads three
    ]


def test_resolvectl_commands_split_and_default_route() -> None:
    assert resolvectl_commands("tun0", SPLIT) == [
        ["resolvectl", "dns", "tun0", "10.8.0.53", "fd00::53"],
        ["resolvectl", "domain", "tun0", "corp.example"],
        ["resolvectl", "default-route", "tun0", "no"],
    ]
    assert resolvectl_commands("tun0", FULL) == [
        ["resolvectl", "dns", "tun0", "10.8.0.53"],
        ["resolvectl", "domain", "tun0", "corp.example", "~."],
        ["resolvectl", "default-route", "tun0", "yes"],
    ]
    # all names through the tunnel also without domains: the default route alone lets
    # resolved ask the physical link's servers too (a DNS leak)
    assert resolvectl_commands("tun0", DnsSettings(("10.8.0.53",))) == [
        ["resolvectl", "dns", "tun0", "10.8.0.53"],
        ["resolvectl", "domain", "tun0", "~."],
        ["resolvectl", "default-route", "tun0", "yes"],
    ]


def test_resolve_domains_route_only_their_names_to_the_tunnel() -> None:
    """`dns server N resolve-domains` without redirect-gateway: ~domain instead of ~., and
    the link is not resolved's default route, so other names keep the system's servers."""
    split = DnsSettings(("10.8.0.53",), ("corp.example",), False, ("corp.example", "lab.example"))
    assert resolvectl_commands("tun0", split) == [
        ["resolvectl", "dns", "tun0", "10.8.0.53"],
        ["resolvectl", "domain", "tun0", "corp.example", "~lab.example"],
        ["resolvectl", "default-route", "tun0", "no"],
    ]
    full = DnsSettings(("10.8.0.53",), (), True, ("lab.example",))
    assert resolvectl_commands("tun0", full)[1:] == [
        ["resolvectl", "domain", "tun0", "~lab.example", "~."],
        ["resolvectl", "default-route", "tun0", "yes"],
    ]


def test_resolved_backend_runs_the_commands_and_reverts(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr("trivpn.session.dns.subprocess.run", fake_run)
    conf = DnsConfigurator("tun7", use_resolved=True)
    conf.apply(FULL)
    conf.apply(FULL)  # unchanged: nothing again
    conf.undo()
    assert calls == [*resolvectl_commands("tun7", FULL), ["resolvectl", "revert", "tun7"]]


def test_resolved_is_not_used_without_resolvectl_or_its_socket(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\n")
    assert not resolved_active(conf, tmp_path / "no-resolved")


def _files(tmp_path: Path) -> tuple[Path, Path]:
    conf = tmp_path / "resolv.conf"
    conf.write_bytes(ORIGINAL)
    return conf, tmp_path / "state"


def test_resolv_conf_is_rewritten_in_place_and_restored_byte_for_byte(tmp_path: Path) -> None:
    conf, state = _files(tmp_path)
    inode = conf.stat().st_ino
    rc = DnsConfigurator("tun0", resolv_conf=conf, state_dir=state, use_resolved=False)
    rc.recover()
    rc.apply(FULL)
    assert b"nameserver 10.8.0.53" in conf.read_bytes()
    assert conf.stat().st_ino == inode  # in place: works on a bind mount
    assert len(list(state.glob("resolv-*.json"))) == 1
    rc.apply(SPLIT)  # the server pushed something else on a reconnect
    assert b"nameserver 192.168.1.1" in conf.read_bytes()
    rc.undo()
    assert conf.read_bytes() == ORIGINAL
    assert list(state.glob("resolv-*.json")) == []
    rc.undo()  # idempotent


def _crash(conf: Path, state: Path, dns: DnsSettings) -> None:
    """Apply, then forget the object, as a SIGKILLed run does; the pid is made a dead one."""
    r = ResolvConf("tun0", conf, state)
    r.apply(dns)
    r.apply(SPLIT)  # the backup must accept every text this run wrote
    r.apply(dns)
    (backup,) = state.glob("resolv-*.json")
    data = json.loads(backup.read_text())
    data["pid"] = 2**22 + 1  # beyond pid_max's default: no such process
    backup.write_text(json.dumps(data))


def test_next_start_restores_after_a_crash(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    conf, state = _files(tmp_path)
    _crash(conf, state, FULL)
    assert conf.read_bytes() != ORIGINAL
    with caplog.at_level(logging.WARNING, logger="trivpn"):
        DnsConfigurator("tun1", resolv_conf=conf, state_dir=state, use_resolved=False).recover()
    assert conf.read_bytes() == ORIGINAL
    assert list(state.glob("resolv-*.json")) == []
    assert "earlier trivpn run" in caplog.text


def test_a_file_changed_by_someone_else_is_left_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    conf, state = _files(tmp_path)
    _crash(conf, state, FULL)
    conf.write_bytes(b"nameserver 9.9.9.9\n")  # e.g. a DHCP client rewrote it meanwhile
    with caplog.at_level(logging.WARNING, logger="trivpn"):
        DnsConfigurator("tun1", resolv_conf=conf, state_dir=state, use_resolved=False).recover()
    assert conf.read_bytes() == b"nameserver 9.9.9.9\n"
    assert list(state.glob("resolv-*.json")) == []
    assert "changed by someone else" in caplog.text


def test_a_live_owner_keeps_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf, state = _files(tmp_path)
    _crash(conf, state, FULL)
    written = conf.read_bytes()
    monkeypatch.setattr(dnsmod, "_trivpn_alive", lambda pid: True)
    rc = DnsConfigurator("tun1", resolv_conf=conf, state_dir=state, use_resolved=False)
    rc.recover()
    rc.apply(SPLIT)
    assert conf.read_bytes() == written  # not ours to touch


def test_an_unreadable_backup_is_dropped(tmp_path: Path) -> None:
    conf, state = _files(tmp_path)
    state.mkdir()
    st = conf.stat()
    (state / f"resolv-{st.st_dev}-{st.st_ino}.json").write_text("{not json")
    DnsConfigurator("tun1", resolv_conf=conf, state_dir=state, use_resolved=False).recover()
    assert conf.read_bytes() == ORIGINAL and list(state.iterdir()) == []


def test_no_dns_pushed_changes_nothing(tmp_path: Path) -> None:
    conf, state = _files(tmp_path)
    rc = DnsConfigurator("tun0", resolv_conf=conf, state_dir=state, use_resolved=False)
    rc.apply(None)
    rc.undo()
    assert conf.read_bytes() == ORIGINAL and not state.exists()


def test_resolved_reconnect_replaces_the_previous_sessions_domains(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reconnect whose server pushes no domain any more must not leave the old ones on the link."""
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr("trivpn.session.dns.subprocess.run", fake_run)
    conf = DnsConfigurator("tun7", use_resolved=True)
    conf.apply(SPLIT)
    calls.clear()
    conf.apply(DnsSettings(("10.8.0.53",), (), default_route=False))
    assert ["resolvectl", "domain", "tun7", ""] in calls  # resolvectl's way to clear the list
