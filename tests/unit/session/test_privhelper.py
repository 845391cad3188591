"""The privileged helper's wire: plans as JSON (never pickle), requests, EOF means undo."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from trivpn.errors import ConfigError
from trivpn.profile.model import Profile
from trivpn.session.netsettings import DnsSettings, NetPlan
from trivpn.session.privdrop import (
    HelperLink,
    PrivDrop,
    _nft,
    _root_script,
    _serve,
    plan_from_json,
    plan_to_json,
)
from trivpn.session.scripts import ScriptRunner
from trivpn.tun.tunplan import TunConfig


def _plan() -> NetPlan:
    tun = TunConfig(mtu=1400, ipv4=("10.8.0.2", 24, None), ipv6=("fd00::2", 64),
                    routes=[("10.9.0.0/16", "10.8.0.1", 5)], routes6=[("fd00:9::/64", None, None)],
                    redirect_gateway=True, server_addresses=["192.0.2.1"], redirect_via="10.8.0.1")
    return NetPlan(tun, DnsSettings(("10.8.0.53",), ("example.test",), False, ("corp.test",)), "fe80::7")


def test_plan_round_trips_exactly() -> None:
    assert plan_from_json(plan_to_json(_plan())) == _plan()
    assert plan_from_json(plan_to_json(NetPlan(TunConfig()))) == NetPlan(TunConfig())
    for bad in (b"[]", b'{"tun": 3}', b'{"tun": {"evil": 1}}', b"not json"):
        with pytest.raises(ValueError):
            plan_from_json(bad)


class FakeApplier:
    def __init__(self) -> None:
        self.calls: list[object] = []

    def apply(self, plan: NetPlan) -> None:
        if plan.tun.mtu == 999:
            raise ConfigError("kernel said no")
        self.calls.append(plan)

    def undo_net(self) -> None:
        self.calls.append("undo-net")

    def undo_dns(self) -> None:
        self.calls.append("undo-dns")


def test_helper_serves_requests_and_undoes_everything_at_eof() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fake = FakeApplier()
    t = threading.Thread(target=_serve, args=(theirs, fake))  # a duck-typed applier
    t.start()
    link = HelperLink(ours, pid=-1)
    link.apply(_plan())
    with pytest.raises(ConfigError, match="kernel said no"):
        link.apply(NetPlan(TunConfig(mtu=999)))
    link.undo_dns()
    ours.close()  # the engine is gone: the helper undoes what is left and ends
    t.join(5)
    assert not t.is_alive()
    assert fake.calls == [_plan(), "undo-dns", "undo-net", "undo-dns"]


def test_no_user_no_drop_and_unknown_user_is_a_config_error() -> None:
    assert PrivDrop.from_profile(Profile(remotes=[])) is None
    with pytest.raises(ConfigError, match="no such user"):
        PrivDrop.from_profile(Profile(remotes=[], user="no-such-user-trivpn"))
    with pytest.raises(ConfigError, match="no such group"):
        PrivDrop.from_profile(Profile(remotes=[], user="nobody", group="no-such-group-trivpn"))
    drop = PrivDrop.from_profile(Profile(remotes=[], user="nobody"))
    assert drop is not None and drop.switch.identity is not None and drop.switch.identity.uid == 65534


def test_root_scripts_only_the_profiles_command_once_with_openvpn_names(tmp_path: Path) -> None:
    out = tmp_path / "env"
    script = tmp_path / "up.sh"
    script.write_text(f"#!/bin/sh\nenv > {out}\n")
    script.chmod(0o755)
    runner = ScriptRunner(Profile(remotes=[], script_up=f"{script} x", script_security=2, setenv=[("FOO", "1")]))
    done: set[str] = set()
    env = {"dev": "tun0", "FOO": "1", "LD_PRELOAD": "/evil.so", "BASH_ENV": "/evil", "foreign_option_1": "a"}
    assert _root_script(runner, done, {"kind": "up", "argv": ["/bin/sh", "-c", "id"], "env": {}}) == (
        "refused: not the profile's command")
    assert _root_script(runner, done, {"kind": "up", "argv": [str(script), "x", "tun0"], "env": env}) is None
    text = out.read_text()
    assert "dev=tun0" in text and "FOO=1" in text and "foreign_option_1=a" in text
    assert "LD_PRELOAD" not in text and "BASH_ENV" not in text
    assert _root_script(runner, done, {"kind": "up", "argv": [str(script), "x"], "env": {}}) is not None  # once
    assert _root_script(runner, done, {"kind": "down", "argv": [str(script)], "env": {}}) is not None


def test_helper_runs_only_the_kill_switchs_nft_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    from trivpn.session import privdrop
    from trivpn.session.killswitch import TABLE, Hole, ruleset

    calls: list[tuple[list[str], str | None]] = []

    def fake_nft(args: list[str], script: str | None) -> tuple[int, str]:
        calls.append((args, script))
        return 0, "ok"

    monkeypatch.setattr(privdrop, "run_nft", fake_nft)
    script = ruleset("tun0", [Hole("192.0.2.1", 1194, "udp")], owner=1)
    assert _nft(["-f", "-"], script.encode()) == {"rc": 0, "out": "ok"}
    assert _nft(["delete", "table", "inet", TABLE], b"") == {"rc": 0, "out": "ok"}
    assert len(calls) == 2
    for args, payload in [
        (["list", "ruleset"], b""),
        (["-f", "/etc/shadow"], b""),
        (["-f", "-"], b"flush ruleset\n"),
        (["-f", "-"], b'include "/etc/shadow"\n' + script.encode()),
        (["-f", "-"], script.replace(TABLE, "filter").encode()),
    ]:
        assert "refused" in _nft(args, payload).get("error", ""), args
    assert len(calls) == 2
