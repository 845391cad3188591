"""Tests for <connection> blocks as overlays on one parse (trivpn.profile.profile/scope)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import trivpn.profile.options as options_module
from trivpn.errors import ConfigError
from trivpn.profile.model import Profile, ProxySpec, Remote
from trivpn.profile.profile import parse_profile

CA = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUCA==\n-----END CERTIFICATE-----\n"
STATIC_KEY = (
    "-----BEGIN OpenVPN Static key V1-----\n"
    + "".join(f"{i:02x}" * 16 + "\n" for i in range(16))
    + "-----END OpenVPN Static key V1-----\n"
)
# 7 lines: the first line after it is line 8
HEAD = f"client\ndev tun\n<ca>\n{CA}</ca>\n"


def block(*lines: str) -> str:
    return "<connection>\n" + "".join(line + "\n" for line in lines) + "</connection>\n"


def one_line_error(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_profile(text)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def all_profiles(p: Profile) -> list[Profile]:
    return [p, *p.alternatives]


# ---- what a block overrides ----------------------------------------------------------------


def test_blocks_override_remote_proto_and_port() -> None:
    text = (
        HEAD
        + "proto tcp\nport 443\nremote ignored.example\n"
        + block("remote a.example")
        + block("remote b.example 1195", "proto udp")
        + block("remote c.example", "port 8443")
        + block("rport 9000", "remote d.example 1 udp6")
    )
    assert [q.remotes for q in all_profiles(parse_profile(text))] == [
        [Remote("a.example", 443, "tcp")],
        [Remote("b.example", 1195, "udp")],
        [Remote("c.example", 8443, "tcp")],
        [Remote("d.example", 1, "udp6")],
    ]


def test_block_settings_do_not_leak_into_other_blocks() -> None:
    text = (
        HEAD
        + "tun-mtu 1500\n"
        + block("remote a", "nobind", "tun-mtu 1400", "explicit-exit-notify 2", "local 10.0.0.1")
        + block("remote b")
    )
    first, second = all_profiles(parse_profile(text))
    assert (first.nobind, first.tun_mtu, first.explicit_exit_notify) == (True, 1400, 2)
    assert (first.local, first.bind) == ("10.0.0.1", True)
    assert (second.nobind, second.tun_mtu, second.explicit_exit_notify) == (False, 1500, None)
    assert (second.local, second.bind) == (None, False)


def test_global_options_apply_to_every_block_wherever_they_are() -> None:
    text = HEAD + block("remote a") + block("remote b", "proto tcp") + "verb 5\nproto udp6\n"
    first, second = all_profiles(parse_profile(text))
    assert first.verb == second.verb == 5
    assert first.remotes == [Remote("a", 1194, "udp6")]
    assert second.remotes == [Remote("b", 1194, "tcp")]


def test_a_block_value_wins_over_a_later_global_line() -> None:
    # OpenVPN's semantics: what a block says is what that connection uses
    text = HEAD + block("remote a", "tun-mtu 1300", "key-direction 1") + "tun-mtu 1500\n"
    text += "key-direction 0\n" + block("remote b")
    first, second = all_profiles(parse_profile(text))
    assert (first.tun_mtu, first.key_direction) == (1300, 1)
    assert (second.tun_mtu, second.key_direction) == (1500, 0)


def test_inline_key_in_a_block_and_the_combination_checks() -> None:
    text = HEAD + "key-direction 1\n" + block("remote a", f"<tls-auth>\n{STATIC_KEY}</tls-auth>")
    text += block("remote b")
    first, second = all_profiles(parse_profile(text))
    assert (first.tls_auth, first.key_direction) == (STATIC_KEY, 1)
    assert (second.tls_auth, second.key_direction) == (None, 1)
    # a global tls-crypt and a block's tls-auth: the later line is named
    text = HEAD + f"<tls-crypt>\n{STATIC_KEY}</tls-crypt>\n"  # lines 8-27
    text += block("remote a") + block("remote b", f"<tls-auth>\n{STATIC_KEY}</tls-auth>")
    assert one_line_error(text) == (  # <tls-auth> is on line 33
        "line 33: option 'tls-auth': 'tls-auth' and 'tls-crypt' cannot be used together"
    )


def test_proxies_in_blocks() -> None:
    text = HEAD + "http-proxy p 3128\nhttp-proxy-option CUSTOM-HEADER X-Top 1\n"
    text += block("remote a 443 tcp", "http-proxy-option CUSTOM-HEADER X-A 2")
    text += block("remote b 443 tcp", "http-proxy q 8080", "http-proxy-option AGENT x/1")
    first, second = all_profiles(parse_profile(text))
    assert first.http_proxy == ProxySpec("p", 3128)
    assert first.http_proxy_options.headers == (("X-Top", "1"), ("X-A", "2"))
    assert second.http_proxy == ProxySpec("q", 8080)
    assert second.http_proxy_options.headers == (("X-Top", "1"),)
    assert (first.http_proxy_options.agent, second.http_proxy_options.agent) == (None, "x/1")
    text = HEAD + block("remote a 443 tcp", "socks-proxy s") + block("remote b 443 tcp")
    first, second = all_profiles(parse_profile(text))
    assert (first.socks_proxy, second.socks_proxy) == (ProxySpec("s", 1080), None)
    # a proxy needs TCP in the block that uses it, not in the others
    text = HEAD + block("remote a 1 udp") + block("remote b 1 udp", "http-proxy p 3128")
    assert one_line_error(text) == (
        "line 13: option 'http-proxy': a proxy carries TCP only, but 'remote b' (line 12) "
        "uses udp: add 'proto tcp'"
    )


def test_every_profile_has_lists_of_its_own() -> None:
    p = parse_profile(HEAD + block("remote a") + block("remote b") + block("remote c"))
    alt = p.alternatives[0]
    assert alt.alternatives == [] and alt.warnings == []
    assert alt.alternatives is not p.alternatives and alt.warnings is not p.warnings
    alt.data_ciphers.append("X")
    assert "X" not in p.data_ciphers and "X" not in p.alternatives[1].data_ciphers
    assert p.connections == alt.connections == [{"remote": ["a"]}, {"remote": ["b"]}, {"remote": ["c"]}]


def test_warnings_of_the_first_block_are_in_line_order() -> None:
    text = HEAD + "frob\n" + block("remote a", "float", "mssfix 1400") + "zap\nremote top\n"
    text += block("remote b", "link-mtu 1500")
    assert parse_profile(text).warnings == [
        "option 'frob' (line 8) is not supported and was ignored",
        "option 'float' (line 11) is not supported and was ignored",
        "option 'mssfix' (line 12) is not supported and was ignored",
        "option 'zap' (line 14) is not supported and was ignored",
        "option 'remote' (line 15) is ignored because <connection> blocks are present",
    ]


# ---- what a block may not do --------------------------------------------------------------


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        (block("remote a", "verb 3"), "line 10: option 'verb': is not allowed inside a <connection> block"),
        (block("remote a") + block("remote b", "dev tun"), "line 13: option 'dev': is not allowed inside a <connection> block"),
        (block("remote a", f"<ca>\n{CA}</ca>"), "line 10: option 'ca': is not allowed inside a <connection> block"),
        (block("remote a", "setenv opt verb 3"), "line 10: option 'setenv': is not allowed inside a <connection> block"),
        (block("remote a") + block("nobind"), "line 11: option 'connection': block has no 'remote'"),
        (block("remote a") + block("remote b", "remote c"), "line 13: option 'remote': a <connection> block may hold only one 'remote'"),
        (block("remote a") + block("remote b", "port x"), "line 13: option 'port': 'x' is not a number"),
        (block("remote a", "fragment 1300"), "line 10: option 'fragment': is not supported: it changes the data packet framing and the server would not understand us"),
    ],
)  # fmt: skip
def test_block_errors_are_one_line(blocks: str, message: str) -> None:
    assert one_line_error(HEAD + blocks) == message


# ---- one parse --------------------------------------------------------------------------------


def test_many_blocks_are_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each line is tokenized at most once, however many blocks there are."""
    calls = 0
    tokenize = options_module.tokenize_line

    def counting(line: str) -> list[str]:
        nonlocal calls
        calls += 1
        return tokenize(line)

    monkeypatch.setattr(options_module, "tokenize_line", counting)
    text = HEAD + "proto tcp\n" + "".join(
        block(f"remote host{i}.example {1000 + i}", "nobind", "explicit-exit-notify 2")
        for i in range(200)
    )
    p = parse_profile(text)
    assert calls <= text.count("\n")
    assert len(p.alternatives) == 199
    assert p.alternatives[-1].remotes == [Remote("host199.example", 1199, "tcp")]


# ---- the overlay rule, for any placement of global and block lines ----------------------------

#: connection-level options: (line, field, value)
SETTINGS = [
    ("tun-mtu 1400", "tun_mtu", 1400),
    ("tun-mtu 1300", "tun_mtu", 1300),
    ("explicit-exit-notify 2", "explicit_exit_notify", 2),
    ("connect-retry-max 4", "connect_retry_max", 4),
    ("connect-timeout 9", "server_poll_timeout", 9),
    ("key-direction 0", "key_direction", 0),
    ("key-direction 1", "key_direction", 1),
    ("nobind", "nobind", True),
    ("lport 5000", "lport", 5000),
]
settings_lists = st.lists(st.sampled_from(SETTINGS), max_size=4)


@given(settings_lists, st.lists(settings_lists, min_size=1, max_size=4), st.data())
def test_overlay_rule(
    top: list[tuple[str, str, object]],
    blocks: list[list[tuple[str, str, object]]],
    data: st.DataObject,
) -> None:
    """Block k's profile: the block's last value for a field, else the global one."""
    pieces = [line for line, _, _ in top]
    pieces += [block(f"remote b{k}", *(line for line, _, _ in b)) for k, b in enumerate(blocks)]
    order = data.draw(st.permutations(range(len(pieces))))
    placed = [pieces[i] for i in order]
    text = HEAD + "".join(p if p.endswith("\n") else p + "\n" for p in placed)
    default = Profile(remotes=[])
    expected_top = {f: getattr(default, f) for _, f, _ in SETTINGS}
    for i in order:  # global lines in the order they were placed: the last one wins
        if i < len(top):
            expected_top[top[i][1]] = top[i][2]
    in_text_order = [i - len(top) for i in order if i >= len(top)]  # the profiles' order
    got = all_profiles(parse_profile(text))
    for k, profile in zip(in_text_order, got, strict=True):
        expected = dict(expected_top)
        for _, f, v in blocks[k]:
            expected[f] = v
        assert {f: getattr(profile, f) for f in expected} == expected
        assert profile.remotes == [Remote(f"b{k}", 1194, "udp")]
