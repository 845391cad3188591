"""The kill switch without root: the nft script it writes and its life cycle with a fake nft.

The real tables are exercised in namespaces (tests/integration/test_failopen.py); here the
rules themselves, the stale-table handling and the client's hooks are pinned.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest
from helpers.require import in_ci

from trivpn.errors import ConfigError
from trivpn.networkio import Endpoint
from trivpn.session.killswitch import (
    TABLE,
    Hole,
    KillSwitch,
    remove_stale_table,
    ruleset,
    table_owner,
)


class FakeNft:
    """Records scripts; `table` is what `nft list table` shows (None: no table)."""

    def __init__(self, table: str | None = None) -> None:
        self.table = table
        self.calls: list[tuple[list[str], str | None]] = []

    def __call__(self, args: list[str], script: str | None) -> tuple[int, str]:
        self.calls.append((args, script))
        if args[:1] == ["list"]:
            return (0, self.table) if self.table is not None else (1, "Error: No such file or directory")
        if args[:1] == ["delete"]:
            if self.table is None:
                return 1, "Error: No such file or directory"
            self.table = None
            return 0, ""
        assert args == ["-f", "-"] and script is not None
        self.table = script
        return 0, ""

    @property
    def scripts(self) -> list[str]:
        return [s for a, s in self.calls if a == ["-f", "-"] and s is not None]


def test_ruleset_allows_only_loopback_the_tun_the_servers_and_link_upkeep() -> None:
    text = ruleset("tun7", [Hole("192.0.2.1", 1194, "udp"), Hole("2001:db8::1", 443, "tcp")], owner=4242)
    assert text.startswith(f"table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n")
    assert 'comment "trivpn kill switch, pid 4242"' in text
    assert "type filter hook output priority filter; policy drop;" in text
    assert "type filter hook forward priority filter; policy drop;" in text
    for rule in ('oifname "lo" accept', 'oifname "tun7" accept', 'iifname "tun7" accept',
                 "ip daddr 192.0.2.1 udp dport 1194 accept", "ip6 daddr 2001:db8::1 tcp dport 443 accept"):
        assert f"\t{rule}\n" in text, rule
    assert "dport 53" not in text  # DNS only while resolving
    assert "udp dport 53 accept" in ruleset("tun7", [], dns=True)
    # nothing from outside can be smuggled into the script
    with pytest.raises(ConfigError):
        ruleset('tun0" accept', [])
    with pytest.raises(ConfigError):
        ruleset("tun0", [Hole("1.2.3.4 accept; ", 1, "udp")])
    with pytest.raises(ConfigError):
        ruleset("tun0", [Hole("1.2.3.4", 0, "udp")])


def test_ruleset_is_accepted_by_nft_when_it_is_installed() -> None:
    """`nft -c` checks a script without applying it (needs CAP_NET_ADMIN for the cache)."""
    if os.geteuid() != 0 or shutil.which("nft") is None:
        reason = "needs root and nft (checked for real in tests/integration/test_failopen.py)"
        if in_ci():
            pytest.fail(f"CI=true, so not skipping: {reason}", pytrace=False)
        pytest.skip(f"NOT RUN: {reason}")
    text = ruleset("tun0", [Hole("192.0.2.1", 1194, "udp"), Hole("2001:db8::1", 1194, "tcp")], dns=True)
    r = subprocess.run(["nft", "-c", "-f", "-"], input=text, capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr


def test_life_cycle_writes_only_on_change_and_removes_the_table() -> None:
    nft = FakeNft()
    ks = KillSwitch("tun0", nft)
    ks.start()
    assert len(nft.scripts) == 1 and "dport 1194" not in nft.scripts[0]
    hole = Hole("192.0.2.1", 1194, "udp")
    ks.allow([hole])
    ks.allow([hole, hole])
    assert len(nft.scripts) == 2 and "ip daddr 192.0.2.1 udp dport 1194 accept" in nft.scripts[1]
    ks.allow_dns(True)
    assert "udp dport 53 accept" in nft.scripts[-1] and "192.0.2.1" in nft.scripts[-1]
    ks.allow_dns(False)
    assert "dport 53" not in nft.scripts[-1]
    assert table_owner(nft) == (True, os.getpid())
    ks.stop()
    ks.stop()  # idempotent
    assert nft.table is None and [a for a, _ in nft.calls].count(["delete", "table", "inet", TABLE]) == 1


def test_a_stale_table_is_replaced_or_removed_and_a_live_ones_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from trivpn.session import killswitch

    alive: set[int] = set()
    monkeypatch.setattr(killswitch, "_pid_is_trivpn", lambda pid: pid in alive)
    # a table whose owner is gone (SIGKILLed, crashed)
    stale = ruleset("tun0", [], owner=999999)
    nft = FakeNft(stale)
    KillSwitch("tun1", nft).start()
    assert nft.table is not None and f"pid {os.getpid()}" in nft.table
    nft = FakeNft(stale)
    assert remove_stale_table(nft) and nft.table is None
    assert not remove_stale_table(nft)  # nothing left
    # a table whose owner still runs belongs to another client: refused, never removed
    alive.add(999999)
    nft = FakeNft(stale)
    with pytest.raises(ConfigError, match=r"another trivpn client \(pid 999999\) has its kill switch on"):
        KillSwitch("tun1", nft).start()
    assert not remove_stale_table(nft) and nft.table == stale


def test_a_refused_script_is_one_line() -> None:
    def broken(args: list[str], script: str | None) -> tuple[int, str]:
        return (1, "Error: No such file or directory") if args[0] == "list" else (1, "Error: syntax\nmore")

    with pytest.raises(ConfigError, match="^kill switch: nft refused the table: Error: syntax$"):
        KillSwitch("tun0", broken).start()


def test_client_hooks_open_holes_for_the_endpoints_in_use() -> None:
    from trivpn.client import _Paths
    from trivpn.session.netapply import TunApplier

    nft = FakeNft()
    ks = KillSwitch("tun0", nft)
    ks.start()
    paths = _Paths(TunApplier(None, lambda fn: None), ks)
    a = Endpoint("vpn", 1194, "udp", socket.AF_INET, ("192.0.2.1", 1194))
    b = Endpoint("vpn", 1194, "udp", socket.AF_INET6, ("2001:db8::1", 1194, 0, 0))
    paths.resolving(True)
    assert ks.dns
    paths.resolving(False)
    paths.reaching([a, b])
    assert ks.holes == (Hole("192.0.2.1", 1194, "udp"), Hole("2001:db8::1", 1194, "udp"))
    paths.reaching([b])
    assert list(ks.holes) == [Hole("2001:db8::1", 1194, "udp")]


async def test_open_within_tells_the_hooks_before_the_first_packet() -> None:
    """DNS opens only around a real name lookup; every endpoint is announced before the
    socket exists, and the one in use once it is open."""
    import trio
    from helpers.profiles import make_profile

    from trivpn.session.config import SessionConfig
    from trivpn.session.reconnect import candidates
    from trivpn.session.transport import open_within

    seen: list[object] = []

    class Hooks:
        def resolving(self, active: bool) -> None:
            seen.append(("dns", active))

        def reaching(self, endpoints: object) -> None:
            assert isinstance(endpoints, list)
            seen.append([ep.address for ep in endpoints])

    import random

    for host, expect_dns in (("127.0.0.1", False), ("localhost", True)):
        seen.clear()
        config = SessionConfig.from_profile(make_profile(remote=f"remote {host} 1194 udp4\n"))
        (cand,) = candidates(config.connections, random.Random(0))
        transport = await open_within(cand, 0, trio.current_time() + 5, None, Hooks())
        transport.close()
        dns = [("dns", True), ("dns", False)] if expect_dns else []
        assert seen == [*dns, ["127.0.0.1"], ["127.0.0.1"]], host


def test_a_refused_update_fails_closed_and_is_retried() -> None:
    """nft applies a script whole or not at all: when an update is refused the old table
    stays, the session restarts (not the run: that would drop the table), and the next
    attempt writes again."""
    from trivpn.errors import SessionRestart

    nft = FakeNft()
    ks = KillSwitch("tun0", nft)
    ks.start()
    good = nft.table
    refuse = [True]

    def flaky(args: list[str], script: str | None) -> tuple[int, str]:
        if args == ["-f", "-"] and refuse[0]:
            return 1, "Error: Could not process rule"
        return nft(args, script)

    ks._run = flaky
    hole = Hole("192.0.2.1", 1194, "udp")
    with pytest.raises(SessionRestart, match="nft refused the table"):
        ks.allow([hole])
    assert nft.table == good and ks.holes == ()
    refuse[0] = False
    ks.allow([hole])
    assert nft.table is not None and "192.0.2.1" in nft.table
