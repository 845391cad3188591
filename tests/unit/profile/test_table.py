"""Tests for the declarative option table (trivpn.profile.table) and its validators."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from trivpn.errors import ConfigError
from trivpn.profile.model import Profile
from trivpn.profile.profile import parse_profile
from trivpn.profile.scope import APPEND_FIELDS, Extras, RawRemote, Scope
from trivpn.profile.special import MAX_CUSTOM_HTTP_HEADERS, SPECIAL
from trivpn.profile.table import SILENT_OPTIONS, TABLE, UNSAFE_OPTIONS

CA = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUCA==\n-----END CERTIFICATE-----\n"
# 8 lines: an option appended to it is on line 9
MINIMAL = f"client\ndev tun\nremote vpn.example.com\n<ca>\n{CA}</ca>\n"
VORACLE = "is not supported: compressing before encrypting leaks plaintext (VORACLE)"


def parse(extra: str, base_dir: Path | None = None) -> Profile:
    return parse_profile(MINIMAL + extra, base_dir=base_dir)


def error_of(extra: str, base_dir: Path | None = None) -> str:
    with pytest.raises(ConfigError) as exc:
        parse(extra, base_dir)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ---- the table is consistent -------------------------------------------------------------


def test_every_table_field_exists_and_names_do_not_collide() -> None:
    profile_fields = {f.name for f in fields(Profile)}
    extra_fields = {f.name for f in fields(Extras)}
    assert not profile_fields & extra_fields  # Scope.set must know where a name goes
    for name, row in TABLE.items():
        targets = [row.field] if row.field is not None else []
        targets += [f for f, _ in row.also]
        for target in targets:
            assert Scope.is_field(target), (name, target)
        assert 0 <= row.lo <= row.hi, name
    assert APPEND_FIELDS <= extra_fields | profile_fields


def test_each_option_has_one_treatment() -> None:
    table, special, unsafe = set(TABLE), set(SPECIAL), set(UNSAFE_OPTIONS)
    assert not table & special
    assert not (table | special) & unsafe  # a refused option must never be handled
    assert not (table | special) & SILENT_OPTIONS
    assert not unsafe & SILENT_OPTIONS


def test_scope_set_refuses_an_unknown_field() -> None:
    with pytest.raises(KeyError):
        Scope().set("no_such_field", 1)


# ---- each validator's error ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # arity
        ("verb\n", "takes exactly 1 argument, got 0"),
        ("nobind 1\n", "takes exactly 0 arguments, got 1"),
        ("keepalive 1\n", "takes exactly 2 arguments, got 1"),
        ("tun-mtu 1400 10 20\n", "takes 1 to 2 arguments, got 3"),
        ("static-challenge x\n", "takes 2 to 3 arguments, got 1"),
        # integers
        ("verb x\n", "'x' is not a number"),
        ("verb \uff13\n", "'\uff13' is not a number"),  # a digit, but not an ASCII one
        ("ping -1\n", "'-1' is not a number"),
        ("verb 12\n", "12 is out of range 0..11"),
        ("tun-mtu 99\n", "99 is out of range 100..65535"),
        ("lport 65536\n", "65536 is out of range 0..65535"),
        ("port 0\n", "0 is out of range 1..65535"),
        ("keepalive 10 x\n", "'x' is not a number"),
        ("reneg-sec 10 x\n", "'x' is not a number"),
        ("connect-retry 5 x\n", "'x' is not a number"),
        ("explicit-exit-notify x\n", "'x' is not a number"),
        ("resolv-retry forever\n", "'forever' is not a number"),
        ("reneg-bytes 4611686018427387905\n", "4611686018427387905 is out of range 0..4611686018427387904"),
        # enumerations
        ("dev-type tup\n", "unknown device type 'tup' (use tun)"),
        ("remote-cert-tls client\n", "a client can only check 'server' certificates, not 'client'"),
        ("key-direction 2\n", "key direction must be 0 or 1, not '2'"),
        ("mode server\n", "is not supported: this is a server configuration"),
        ("proto sctp\n", "unknown protocol 'sctp'"),
        ("proto tcp6-server\n", "'tcp6-server' is for servers; a client uses tcp or udp"),
        ("static-challenge x 2\n", "echo flag must be 0 or 1, not '2'"),
        ("tls-version-min 2.0\n", "unknown TLS version '2.0'"),
        ("tls-version-min 1.2 maybe\n", "unexpected 'maybe' (only 'or-highest' may follow)"),
        ('verify-x509-name ""\n', "empty name"),
        ("verify-x509-name x bogus\n", "unknown type 'bogus' (subject, name or name-prefix)"),
        ("comp-lzo maybe\n", "unknown mode 'maybe' (yes, no or adaptive)"),
        ("comp-lzo yes\n", f"compression (comp-lzo yes) {VORACLE}"),
        ("compress zstd\n", "unknown algorithm 'zstd'"),
        ("compress lz4-v2\n", f"compression (lz4-v2) {VORACLE}"),
        # names and addresses
        ("cipher AES/256\n", "invalid cipher name 'AES/256'"),
        ("data-ciphers AES-256-GCM::AES-128-GCM\n", "invalid cipher name ''"),
        ("auth ''\n", "invalid cipher name ''"),
        ("local vpn.example.com\n", "'vpn.example.com' must be an IP address"),
        # key material (inline)
        ("<cert>\nnot a cert\n</cert>\n", "no PEM certificate found"),
        ("<key>\nnot a key\n</key>\n", "no PEM private key found"),
        ("<tls-crypt>\nnope\n</tls-crypt>\n", "no 'OpenVPN Static key V1' found"),
    ],
)
def test_validator_errors(extra: str, message: str) -> None:
    name = extra.split()[0].strip("<>")
    assert error_of(extra) == f"line 9: option '{name}': {message}"


def test_tls_crypt_v2_key_error_keeps_the_key_parser_message() -> None:
    msg = error_of("<tls-crypt-v2>\nnot a key\n</tls-crypt-v2>\n")
    assert msg.startswith("line 9: option 'tls-crypt-v2': tls-crypt-v2")


def test_file_errors(tmp_path: Path) -> None:
    msg = error_of("ca nothere.crt\n", tmp_path)
    assert msg.startswith(f"line 9: option 'ca': cannot read '{tmp_path / 'nothere.crt'}': ")
    (tmp_path / "bin.crt").write_bytes(b"\xff\xfe")
    assert error_of("cert bin.crt\n", tmp_path) == (
        f"line 9: option 'cert': '{tmp_path / 'bin.crt'}' is not a text (PEM) file"
    )
    (tmp_path / "big.crt").write_bytes(b"x" * ((1 << 20) + 1))
    assert "larger than" in error_of("ca big.crt\n", tmp_path)


# ---- values the table produces --------------------------------------------------------------


def test_companion_assignments_and_value_shapes() -> None:
    assert parse("").bind is False
    p = parse("local 10.1.2.3\n")
    assert (p.local, p.bind) == ("10.1.2.3", True)
    p = parse("lport 4000\n")
    assert (p.lport, p.bind) == (4000, True)
    assert parse("bind ipv6only\n").bind is True
    assert parse("connect-retry 5\n").connect_retry == (5, 300)
    assert parse("connect-retry 5 10\n").connect_retry == (5, 10)
    assert parse("connect-retry 50 10\n").connect_retry == (50, 50)  # the cap is never below
    assert parse("connect-timeout 7\n").server_poll_timeout == 7
    assert parse('static-challenge "Enter OTP" 1\n').static_challenge == ("Enter OTP", True)
    assert parse("tun-mtu 1400 1500\n").tun_mtu == 1400
    assert parse("mode p2p\n").warnings == []


def test_an_unsupported_value_warns_like_an_unsupported_option() -> None:
    p = parse("compress stub\ncompress migrate\n")
    assert p.compression == "stub"  # the ignored line changes nothing
    assert p.warnings == ["option 'compress migrate' (line 10) is not supported and was ignored"]


# ---- repeated options ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "attr", "value"),
    [
        ("verb 3\nverb 5\n", "verb", 5),
        ("cipher AES-128-CBC\ncipher aes-256-cbc\n", "cipher", "AES-256-CBC"),
        ("data-ciphers AES-128-GCM\nncp-ciphers AES-256-GCM\n", "data_ciphers", ["AES-256-GCM"]),
        ("tun-mtu 1400\ntun-mtu 1300\n", "tun_mtu", 1300),
        ("comp-lzo no\ncompress stub-v2\n", "compression", "stub-v2"),
        ("server-poll-timeout 3\nconnect-timeout 9\n", "server_poll_timeout", 9),
        ("keepalive 1 2\nkeepalive 3 4\n", "keepalive", (3, 4)),
        ("resolv-retry 5\nresolv-retry 6\n", "resolv_retry", 6.0),
        ("nobind\nnobind\n", "nobind", True),
        ("setenv opt verb 2\nverb 4\n", "verb", 4),
        ("verb 4\nsetenv opt verb 2\n", "verb", 2),
    ],
)
def test_a_later_table_option_replaces_an_earlier_one(lines: str, attr: str, value: object) -> None:
    assert getattr(parse(lines), attr) == value


def test_repeated_ca_takes_the_last_block() -> None:
    other = CA.replace("MIIB", "MIIC")
    assert parse(f"<ca>\n{other}</ca>\n").ca == other


def test_accumulating_options() -> None:
    p = parse("remote b 2\nremote c 3 tcp\n")
    assert [(r.host, r.port, r.proto) for r in p.remotes] == [
        ("vpn.example.com", 1194, "udp"),
        ("b", 2, "udp"),
        ("c", 3, "tcp"),
    ]
    headers = "".join(f"http-proxy-option CUSTOM-HEADER X-{i} v\n" for i in range(3))
    p = parse("proto tcp\nhttp-proxy p 1\n" + headers)
    assert p.http_proxy_options.headers == tuple((f"X-{i}", "v") for i in range(3))
    p = parse("ignore-unknown-option a\nignore-unknown-option b\na\nb\nc\n")
    assert p.warnings == ["option 'c' (line 13) is not supported and was ignored"]


def test_too_many_custom_headers_names_the_first_line_too_many() -> None:
    headers = "".join(
        f"http-proxy-option CUSTOM-HEADER X-{i} v\n" for i in range(MAX_CUSTOM_HTTP_HEADERS + 1)
    )
    line = 9 + 2 + MAX_CUSTOM_HTTP_HEADERS
    assert error_of("proto tcp\nhttp-proxy p 1\n" + headers) == (
        f"line {line}: option 'http-proxy-option': at most {MAX_CUSTOM_HTTP_HEADERS} custom headers"
    )


# ---- scopes -----------------------------------------------------------------------------------


def test_overlay_replaces_appends_and_leaves_its_inputs_alone() -> None:
    top, block = Scope(), Scope()
    top.set("tun_mtu", 1500)
    top.set("verb", 4)
    top.append("raw_remotes", RawRemote(1, "top", None, None))
    top.append("http_headers", (2, ("X-Top", None)))
    top.lines["tun-mtu"] = 3
    block.set("tun_mtu", 1300)
    block.append("raw_remotes", RawRemote(10, "block", None, None))
    block.append("http_headers", (11, ("X-Block", None)))
    block.lines["tun-mtu"] = 12
    out = top.overlay(block)
    assert (out.profile.tun_mtu, out.profile.verb) == (1300, 4)
    assert [r.host for r in out.extra.raw_remotes] == ["block"]
    assert [h for _, h in out.extra.http_headers] == [("X-Top", None), ("X-Block", None)]
    assert out.lines == {"tun-mtu": 12}
    assert top.profile.tun_mtu == 1500 and [r.host for r in top.extra.raw_remotes] == ["top"]
    assert len(top.extra.http_headers) == 1 and block.profile.verb == 1
