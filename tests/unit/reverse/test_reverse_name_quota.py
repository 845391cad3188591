"""Named binds count against a per-token quota, and a bind does not scan every name.

The hunt: with one valid token, 3000 sessions with random subdomains (a fresh client id
each) all bound within 6 s and the relay's RSS went 29 -> 90 MB; only ports counted
toward --port-quota, and `NameLeases.assign` walked every name on every bind.
"""

from __future__ import annotations

import pathlib

import pytest
import trio
from helpers.reverse_http import DOMAIN, HOST, TOKEN, start_expose

from trivpn.cli import build_parser
from trivpn.errors import ConfigError, FatalError
from trivpn.reverse.build import build_relay
from trivpn.reverse.configfile import load_relay
from trivpn.reverse.expose import Expose, ExposeConfig
from trivpn.reverse.http.names import (
    DEFAULT_NAME_QUOTA,
    ROUTE_HTTP,
    NameLeases,
    NameUnavailable,
)
from trivpn.reverse.http.router import RoutingConfig
from trivpn.reverse.relay import Relay, RelayConfig


class CountingDict(dict[str, object]):
    """Counts the walks over the name table (what made each bind cost O(all names))."""

    walks = 0

    def items(self):  # type: ignore[no-untyped-def,override]
        CountingDict.walks += 1
        return super().items()

    def __iter__(self):  # type: ignore[no-untyped-def,override]
        CountingDict.walks += 1
        return super().__iter__()


def test_one_token_holds_at_most_its_quota_of_names_whatever_its_client_ids() -> None:
    names = NameLeases()
    bound = refused = 0
    for i in range(3000):  # the hunt's figure: 3000 sessions, one token, random names
        try:
            names.assign(("default", i.to_bytes(16, "big")), f"n{i:x}", float(i) / 1000)
            bound += 1
        except NameUnavailable as exc:
            assert "quota of 4 name(s)" in str(exc)
            refused += 1
    assert (bound, refused) == (4, 2996)  # before: 3000 bound, 0 refused
    assert len(names) == 4 and names.held("default", 3.0) == 4


def test_a_new_name_gives_up_the_tokens_oldest_lease_first() -> None:
    names = NameLeases(lease=60, quota=2)
    a, b, c = (("t", bytes([i]) * 16) for i in range(3))
    names.assign(a, "a", 0)
    names.assign(b, "b", 0)
    names.release("a", a, 1)  # a's session ended: leased till 61
    names.release("b", b, 2)
    assert names.assign(c, "c", 3) is False  # over the quota: a's (oldest) lease goes
    assert not names.leased("a", 3) and names.leased("b", 3) and names.leased("c", 3)
    assert names.held("t", 3) == 2
    names.assign(b, "b", 4)  # b is back, in use again: both names in use
    with pytest.raises(NameUnavailable, match="quota of 2"):
        names.assign(a, "a", 5)
    assert names.held("other", 5) == 0 and names.assign(("other", a[1]), "a", 5) is False


def test_quota_is_per_token_name_and_a_client_still_holds_one_name() -> None:
    names = NameLeases(quota=1)
    me = ("me", b"\x01" * 16)
    names.assign(me, "one", 0)
    names.assign(me, "two", 0)  # replacing its own name is not over the quota
    assert not names.leased("one", 0) and names.leased("two", 0) and len(names) == 1
    names.assign(("you", b"\x01" * 16), "three", 0)  # another token: its own quota
    assert len(names) == 2


def test_binds_and_lookups_do_not_walk_every_name() -> None:
    """20,000 names (distinct tokens) held: 1,000 more binds, releases and lookups walk the
    table 0 times (before: 2 walks of all names per bind, 1 per lookup)."""
    names = NameLeases(lease=60)
    for i in range(20_000):
        names.assign((f"t{i}", b"\x00" * 16), f"a{i}", 0.0)
    names._names = CountingDict(names._names)  # type: ignore[assignment]
    CountingDict.walks = 0
    for i in range(1_000):
        owner = (f"u{i}", b"\x00" * 16)
        names.assign(owner, f"b{i}", 1.0)
        names.release(f"b{i}", owner, 1.0)
        assert names.leased(f"b{i}", 2.0)
    assert CountingDict.walks == 0
    assert not names.leased("b0", 61.0) and len(names) == 20_000  # leases still expire


def test_stale_expiries_do_not_pile_up() -> None:
    names = NameLeases(lease=60)
    me = ("me", b"\x02" * 16)
    for i in range(10_000):  # a client that reconnects again and again within its lease
        names.assign(me, "api", float(i))
        names.release("api", me, float(i))
    assert len(names._expiries) <= 2 * len(names) + 64 + 1
    assert names.leased("api", 10_000.0) and not names.leased("api", 10_060.0)
    assert names.held("me", 10_060.0) == 0


# ------------------------------------------------- the quota as a relay option


RELAY = ["relay", "--domain", "tunnels.example.net", "--http-addr", "127.0.0.1:0"]
OPTION_TOKEN = "0123456789abcdef-name-quota"


def _relay(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> Relay:
    monkeypatch.setenv("TRIVPN_TOKEN", OPTION_TOKEN)
    return build_relay(build_parser().parse_args([*RELAY, *argv]))


def test_name_quota_flag_and_config_key_reach_the_name_table(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--name-quota 1` (or `name_quota = 1`): a token's second name is refused while its
    first is in use; the default stays 4, and the flag wins over the file."""
    relay = _relay([], monkeypatch)
    assert relay.router is not None and relay.router.names.quota == DEFAULT_NAME_QUOTA == 4
    relay = _relay(["--name-quota", "1"], monkeypatch)
    assert relay.config.name_quota == 1 and relay.router is not None
    names = relay.router.names
    names.assign(("default", b"\x01" * 16), "one", 0.0)
    with pytest.raises(NameUnavailable, match=r"client default already uses its quota of 1 name"):
        names.assign(("default", b"\x02" * 16), "two", 0.0)
    path = tmp_path / "relay.toml"
    path.write_text("name_quota = 1\n")
    relay = _relay(["--config", str(path)], monkeypatch)
    assert relay.router is not None and relay.router.names.quota == 1
    relay = _relay(["--config", str(path), "--name-quota", "7"], monkeypatch)
    assert relay.router is not None and relay.router.names.quota == 7
    relay = _relay(["--name-quota", "1024"], monkeypatch)  # the upper bound itself is fine
    assert relay.config.name_quota == 1024


@pytest.mark.parametrize("value", ["0", "-1", "1025", "99999999999"])
def test_out_of_range_name_quota_flag_is_one_line(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as ei:
        _relay(["--name-quota", value], monkeypatch)
    assert str(ei.value) == f"--name-quota: must be between 1 and 1024, not {int(value)}"


def test_non_integer_name_quota_flag_is_one_usage_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for value in ("many", "2.5", ""):
        with pytest.raises(SystemExit) as ei:
            build_parser().parse_args([*RELAY, "--name-quota", value])
        assert ei.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "argument --name-quota: invalid int value" in err, err


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("name_quota = 0\n", "must be between 1 and 1024, not 0"),
        ("name_quota = 5000\n", "must be between 1 and 1024, not 5000"),
        ('name_quota = "4"\n', "must be an integer, not a string"),
        ("name_quota = 2.5\n", "must be an integer, not a number"),
        ("name_quota = true\n", "must be an integer, not a boolean"),
    ],
)
def test_bad_name_quota_key_is_one_line(tmp_path: pathlib.Path, text: str, problem: str) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_relay(str(path))
    assert str(ei.value) == f"{path} line 1: name_quota: {problem}"


def test_a_relay_config_with_a_zero_name_quota_is_refused() -> None:
    with pytest.raises(ConfigError, match="^a name quota must be at least 1$"):
        Relay(RelayConfig(tokens={"a": b"0123456789abcdef"}, name_quota=0))


async def test_a_relay_with_name_quota_1_refuses_the_second_name_of_a_token() -> None:
    """Over loopback: one expose holds `one`; another of the same token asking for `two`
    ends with the quota's one line (with the default quota both would bind)."""
    relay = Relay(
        RelayConfig(
            host=HOST,
            port=0,
            start_port=40000,
            end_port=40000,
            tokens={"alice": TOKEN},
            name_quota=1,
            routing=RoutingConfig(DOMAIN, http_addr=(HOST, 0)),
        )
    )
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.serve)
            await start_expose(nursery, relay, 9, "one")  # never dialled: no request is made

            second = Expose(
                ExposeConfig(
                    HOST, relay.tunnel_port, HOST, 9, TOKEN, subdomain="two",
                    routes=ROUTE_HTTP, reconnect=False,
                )
            )
            with pytest.raises(FatalError) as ei:
                await second.run()
            assert "client alice already uses its quota of 1 name(s)" in str(ei.value)
            assert "\n" not in str(ei.value)
            assert relay.router is not None and set(relay.router.routes) == {"one"}
            nursery.cancel_scope.cancel()
