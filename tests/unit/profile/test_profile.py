"""Tests for the .ovpn tokenizer and profile parser (trivpn.profile.options/profile)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from trivpn.errors import ConfigError
from trivpn.profile.options import (
    MAX_PARMS,
    OPTION_PARM_SIZE,
    iter_options,
    tokenize_line,
)
from trivpn.profile.profile import (
    DEFAULT_DATA_CIPHERS,
    SILENT_OPTIONS,
    UNSAFE_OPTIONS,
    Profile,
    Remote,
    load_profile,
    parse_profile,
)

CA = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUCA==\n-----END CERTIFICATE-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nMIIBtDCCAVqgAwIBAgIUCB==\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgE=\n-----END PRIVATE KEY-----\n"
STATIC_KEY = (
    "#\n# 2048 bit OpenVPN static key\n#\n-----BEGIN OpenVPN Static key V1-----\n"
    + "".join(f"{i:02x}" * 16 + "\n" for i in range(16))
    + "-----END OpenVPN Static key V1-----\n"
)

MINIMAL = f"client\ndev tun\nremote vpn.example.com\n<ca>\n{CA}</ca>\n"


def parse(extra: str = "", base: str = MINIMAL, **kw: object) -> Profile:
    return parse_profile(base + extra, **kw)  # type: ignore[arg-type]


def one_line_error(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ---- tokenizer ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "tokens"),
    [
        ("remote vpn.example.com 1194 udp", ["remote", "vpn.example.com", "1194", "udp"]),
        ("  \tverb   3  \r", ["verb", "3"]),
        ("", []),
        ("# a comment", []),
        ("; another comment", []),
        ("   # indented comment", []),
        ("remote host # trailing comment", ["remote", "host"]),
        ("remote host ;trailing", ["remote", "host"]),
        ("setenv FOO a#b", ["setenv", "FOO", "a#b"]),
        (
            'verify-x509-name "C=DE, CN=vpn server" subject',
            ["verify-x509-name", "C=DE, CN=vpn server", "subject"],
        ),
        ("verify-x509-name 'C=DE, CN=x' name", ["verify-x509-name", "C=DE, CN=x", "name"]),
        (r'setenv X "a \"quoted\" word"', ["setenv", "X", 'a "quoted" word']),
        (r'setenv X "back\\slash"', ["setenv", "X", "back\\slash"]),
        (r"setenv X 'no\escapes\here'", ["setenv", "X", r"no\escapes\here"]),
        (r"ca my\ file.crt", ["ca", "my file.crt"]),
        (r"ca c:\\dir\\ca.crt", ["ca", r"c:\dir\ca.crt"]),
        ('setenv X ""', ["setenv", "X", ""]),
        ('"abc"def', ["abc", "def"]),
        ("a 'b c'd", ["a", "b c", "d"]),
        ('x "#not a comment"', ["x", "#not a comment"]),
    ],
)
def test_tokenize_line(line: str, tokens: list[str]) -> None:
    assert tokenize_line(line) == tokens


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('remote "unterminated', "closing quotation"),
        ("remote 'unterminated", "single quotation"),
        (r"ca c:\dir\ca.crt", "backslash"),
        ("remote host\\", "backslash"),
        ("x\0y", "NUL"),
        ("x " + "a" * (OPTION_PARM_SIZE + 1), "longer than"),
        (" ".join(["a"] * (MAX_PARMS + 1)), "parameters"),
    ],
)
def test_tokenize_line_errors(line: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        tokenize_line(line)


def test_tokenize_limits_are_inclusive() -> None:
    assert tokenize_line("x " + "a" * OPTION_PARM_SIZE) == ["x", "a" * OPTION_PARM_SIZE]
    assert len(tokenize_line(" ".join(["a"] * MAX_PARMS))) == MAX_PARMS


def test_iter_options_lines_blocks_and_doubledash() -> None:
    text = "\ufeff# header\n--client\n\n<ca>\nline one\n  line two\r\n  </ca>\nverb 3\n--\n"
    assert list(iter_options(text)) == [
        (2, ["client"]),
        (4, ["<ca>", "line one\n  line two\n"]),
        (8, ["verb", "3"]),
        (9, ["--"]),
    ]


def test_iter_options_empty_block() -> None:
    assert list(iter_options("<tls-auth>\n</tls-auth>")) == [(1, ["<tls-auth>", ""])]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("client\n<ca>\nabc\n", "line 2: inline block <ca> is missing </ca>"),
        ("client\n</ca>\n", "line 2: misplaced"),
        ("<ca> extra\n", "line 1: misplaced"),
        ("<>\n", "line 1: misplaced"),
        ('verb "3\n', "line 1: no closing quotation"),
    ],
)
def test_iter_options_errors(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        list(iter_options(text))
    assert fragment in one_line_error(exc)


# ---- minimal profile and defaults ----------------------------------------------------


def test_minimal_profile_defaults() -> None:
    p = parse()
    assert p.remotes == [Remote("vpn.example.com", 1194, "udp")]
    assert p.dev_type == "tun"
    assert p.ca == CA
    assert p.cert is None and p.key is None
    assert p.data_ciphers == list(DEFAULT_DATA_CIPHERS)
    assert p.auth == "SHA1"
    assert p.pull and p.tls_client
    assert p.verb == 1
    assert p.compression is None
    assert p.auth_user_pass is None
    assert p.warnings == []
    assert p.connections == []


def test_client_equals_tls_client_plus_pull() -> None:
    base = f"tls-client\npull\ndev tun\nremote h\n<ca>\n{CA}</ca>\n"
    p = parse_profile(base)
    assert p.pull and p.tls_client


def test_tls_client_without_pull_is_point_to_point() -> None:
    p = parse_profile(f"tls-client\ndev tun\nremote h\nifconfig 10.9.0.2 10.9.0.1\n<ca>\n{CA}</ca>\n")
    assert p.tls_client and not p.pull
    assert p.ifconfig == ("10.9.0.2", "10.9.0.1")


@pytest.mark.parametrize("text", ["pull\n", ""])
def test_not_a_client_profile(text: str) -> None:
    with pytest.raises(ConfigError, match="not a client profile"):
        parse_profile(text + f"dev tun\nremote h\n<ca>\n{CA}</ca>\n")


def test_missing_ca_and_remote() -> None:
    with pytest.raises(ConfigError, match="missing 'ca'"):
        parse_profile("client\ndev tun\nremote h\n")
    with pytest.raises(ConfigError, match="missing 'remote'"):
        parse_profile(f"client\ndev tun\n<ca>\n{CA}</ca>\n")


# ---- remotes, proto, port ------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("udp", "udp"),
        ("udp4", "udp4"),
        ("udp6", "udp6"),
        ("tcp", "tcp"),
        ("tcp4", "tcp4"),
        ("tcp6", "tcp6"),
        ("tcp-client", "tcp"),
        ("tcp4-client", "tcp4"),
        ("tcp6-client", "tcp6"),
    ],
)
def test_proto_normalized(given: str, normal: str) -> None:
    assert parse(f"proto {given}\n").remotes[0].proto == normal
    assert parse(f"remote h2 443 {given}\n").remotes[1] == Remote("h2", 443, normal)


def test_remote_forms_and_defaults_from_port_and_proto() -> None:
    base = f"client\ndev tun\n<ca>\n{CA}</ca>\n"
    p = parse_profile(
        base + "remote a\nremote b 1195\nremote c 443 tcp\nport 1300\nproto tcp4-client\n"
    )
    assert p.remotes == [
        Remote("a", 1300, "tcp4"),
        Remote("b", 1195, "tcp4"),
        Remote("c", 443, "tcp"),
    ]
    assert parse_profile(base + "rport 1400\nremote a\n").remotes == [Remote("a", 1400, "udp")]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ("proto tcp-server\n", "line 9: option 'proto': 'tcp-server' is for servers"),
        ("proto sctp\n", "line 9: option 'proto': unknown protocol 'sctp'"),
        ("remote h 99999\n", "line 9: option 'remote': 99999 is out of range"),
        ("remote h abc\n", "line 9: option 'remote': 'abc' is not a number"),
        ("remote h 1 udp extra\n", "line 9: option 'remote': takes 1 to 3 arguments, got 4"),
        ("remote\n", "line 9: option 'remote'"),
        ("port 0\n", "line 9: option 'port'"),
        ("remote h 1194 tcp6-server\n", "for servers"),
    ],
)
def test_remote_errors(extra: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(extra)
    assert fragment in one_line_error(exc)


# ---- dev -----------------------------------------------------------------------------


def test_dev_variants() -> None:
    base = f"client\nremote h\n<ca>\n{CA}</ca>\n"
    assert parse_profile(base + "dev tun0\n").dev_type == "tun"
    assert parse_profile(base + "dev vpn0\ndev-type tun\n").dev_type == "tun"
    with pytest.raises(ConfigError, match="line 8: option 'dev': tap"):
        parse_profile(base + "dev tap\n")
    with pytest.raises(ConfigError, match="tap"):
        parse_profile(base + "dev vpn0\ndev-type tap\n")
    with pytest.raises(ConfigError, match="dev-type tun"):
        parse_profile(base + "dev vpn0\n")
    with pytest.raises(ConfigError, match="missing 'dev tun'"):
        parse_profile(base)


# ---- files, inline blocks, keys ------------------------------------------------------


def write_keys(d: Path) -> None:
    (d / "ca.crt").write_text(CA)
    (d / "client.crt").write_text(CERT)
    (d / "client.key").write_text(KEY)
    (d / "client.key").chmod(0o600)  # as users keep keys (others-readable ones warn, issue 13)
    (d / "ta.key").write_text(STATIC_KEY)


def test_files_relative_to_base_dir(tmp_path: Path) -> None:
    write_keys(tmp_path)
    text = (
        "client\ndev tun\nremote h\nca ca.crt\ncert client.crt\nkey client.key\ntls-auth ta.key 1\n"
    )
    p = parse_profile(text, base_dir=tmp_path)
    assert (p.ca, p.cert, p.key, p.tls_auth, p.key_direction) == (CA, CERT, KEY, STATIC_KEY, 1)


def test_files_absolute_path(tmp_path: Path) -> None:
    write_keys(tmp_path)
    p = parse_profile(
        f"client\ndev tun\nremote h\nca {tmp_path / 'ca.crt'}\n", base_dir=Path("/nonexistent")
    )
    assert p.ca == CA


def test_quoted_file_name_with_space(tmp_path: Path) -> None:
    (tmp_path / "my ca.crt").write_text(CA)
    p = parse_profile('client\ndev tun\nremote h\nca "my ca.crt"\n', base_dir=tmp_path)
    assert p.ca == CA


def test_inline_equals_file(tmp_path: Path) -> None:
    write_keys(tmp_path)
    files = parse_profile(
        "client\ndev tun\nremote h\nca ca.crt\ncert client.crt\nkey client.key\ntls-crypt ta.key\n",
        base_dir=tmp_path,
    )
    inline = parse_profile(
        f"client\ndev tun\nremote h\n<ca>\n{CA}</ca>\n<cert>\n{CERT}</cert>\n"
        f"<key>\n{KEY}</key>\n<tls-crypt>\n{STATIC_KEY}</tls-crypt>\n"
    )
    assert (files.ca, files.cert, files.key, files.tls_crypt) == (
        inline.ca,
        inline.cert,
        inline.key,
        inline.tls_crypt,
    )


def test_missing_file_names_option_path_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_profile("client\ndev tun\nremote h\ncert nothere.crt\n", base_dir=tmp_path)
    msg = one_line_error(exc)
    assert "line 4" in msg and "'cert'" in msg and str(tmp_path / "nothere.crt") in msg


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        parse_profile("client\ndev tun\nremote h\nca .\n", base_dir=tmp_path)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ("<cert>\nnot a cert\n</cert>\n", "no PEM certificate"),
        ("<key>\nnot a key\n</key>\n", "no PEM private key"),
        ("<tls-auth>\nnope\n</tls-auth>\n", "Static key"),
        ("<tls-crypt>\nnope\n</tls-crypt>\n", "Static key"),
    ],
)
def test_bad_key_material(extra: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse(extra)


def test_cert_without_key_and_tls_auth_with_tls_crypt() -> None:
    with pytest.raises(ConfigError, match="missing 'key'"):
        parse(f"<cert>\n{CERT}</cert>\n")
    with pytest.raises(ConfigError, match="missing 'cert'"):
        parse(f"<key>\n{KEY}</key>\n")
    with pytest.raises(ConfigError, match="cannot be used together"):
        parse(f"<tls-auth>\n{STATIC_KEY}</tls-auth>\n<tls-crypt>\n{STATIC_KEY}</tls-crypt>\n")


def test_key_direction_forms(tmp_path: Path) -> None:
    (tmp_path / "ta.key").write_text(STATIC_KEY)
    p = parse(f"key-direction 1\n<tls-auth>\n{STATIC_KEY}</tls-auth>\n")
    assert p.tls_auth == STATIC_KEY and p.key_direction == 1
    assert parse(f"<tls-auth>\n{STATIC_KEY}</tls-auth>\n").key_direction is None
    p = parse("tls-auth ta.key 0\n", base_dir=tmp_path)
    assert p.key_direction == 0
    with pytest.raises(ConfigError, match="key direction must be 0 or 1"):
        parse("key-direction 2\n")
    with pytest.raises(ConfigError, match="line 9: option 'key-direction'"):
        parse("key-direction\n")


# ---- TLS checks and ciphers ----------------------------------------------------------


def test_tls_checks() -> None:
    p = parse(
        "remote-cert-tls server\nverify-x509-name vpn.example.com name\ntls-version-min 1.2 or-highest\n"
    )
    assert p.remote_cert_tls == "server"
    assert p.verify_x509_name == ("vpn.example.com", "name")
    assert p.tls_version_min == "1.2"
    assert parse('verify-x509-name "C=US, CN=srv"\n').verify_x509_name == (
        "C=US, CN=srv",
        "subject",
    )
    assert parse("verify-x509-name srv- name-prefix\n").verify_x509_name == ("srv-", "name-prefix")
    assert parse("tls-version-min 1.3\n").tls_version_min == "1.3"


@pytest.mark.parametrize(
    "extra",
    [
        "remote-cert-tls client\n",
        "verify-x509-name x bogus\n",
        "tls-version-min 2.0\n",
        "tls-version-min 1.2 sometimes\n",
    ],
)
def test_tls_check_errors(extra: str) -> None:
    with pytest.raises(ConfigError, match="line 9"):
        parse(extra)


def test_ciphers_and_auth() -> None:
    p = parse(
        "data-ciphers aes-256-gcm:?CHACHA20-POLY1305\ncipher AES-256-CBC\n"
        "data-ciphers-fallback BF-CBC\nauth SHA512\n"
    )
    assert p.data_ciphers == ["AES-256-GCM", "CHACHA20-POLY1305"]
    assert p.cipher == "AES-256-CBC"
    assert p.data_ciphers_fallback == "BF-CBC"
    assert p.auth == "SHA512"
    assert parse("ncp-ciphers AES-128-GCM\n").data_ciphers == ["AES-128-GCM"]
    with pytest.raises(ConfigError, match="invalid cipher name"):
        parse("data-ciphers AES-256-GCM::AES-128-GCM\n")


# ---- simple values -------------------------------------------------------------------


def test_flags_and_numbers() -> None:
    p = parse(
        "persist-tun\npersist-key\nnobind\nmute-replay-warnings\nverb 4\n"
        "resolv-retry infinite\ntun-mtu 1400\nping 10\nping-restart 60\nping-exit 120\n"
        "keepalive 10 120\nreneg-sec 0\nexplicit-exit-notify 2\n"
    )
    assert p.persist_tun and p.persist_key and p.nobind and p.mute_replay_warnings
    assert p.verb == 4
    assert p.resolv_retry == math.inf
    assert (p.tun_mtu, p.ping, p.ping_restart, p.ping_exit) == (1400, 10, 60, 120)
    assert p.keepalive == (10, 120)
    assert p.reneg_sec == 0
    assert p.explicit_exit_notify == 2
    assert parse("resolv-retry 30\n").resolv_retry == 30.0
    assert parse("explicit-exit-notify\n").explicit_exit_notify == 1
    assert parse("reneg-sec 3600 1800\n").reneg_sec == 3600


@pytest.mark.parametrize(
    "extra",
    [
        "verb 12\n",
        "verb x\n",
        "nobind 1\n",
        "ping -1\n",
        "keepalive 10\n",
        "tun-mtu 20\n",
        "resolv-retry forever\n",
        "client extra\n",
    ],
)
def test_bad_values(extra: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(extra)
    assert one_line_error(exc).startswith("line 9: option '")


# ---- compression -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "value"),
    [
        ("comp-lzo no\n", "lzo-no"),
        ("compress\n", "stub"),
        ("compress stub\n", "stub"),
        ("compress stub-v2\n", "stub-v2"),
    ],
)
def test_compression_stubs(extra: str, value: str) -> None:
    assert parse(extra).compression == value


@pytest.mark.parametrize(
    "extra",
    [
        "comp-lzo\n",
        "comp-lzo yes\n",
        "comp-lzo adaptive\n",
        "compress lz4\n",
        "compress lzo\n",
        "compress lz4-v2\n",
    ],
)
def test_real_compression_refused(extra: str) -> None:
    with pytest.raises(ConfigError, match="VORACLE") as exc:
        parse(extra)
    assert "line 9" in one_line_error(exc)


# ---- auth-user-pass ------------------------------------------------------------------


def test_auth_user_pass_forms(tmp_path: Path) -> None:
    assert parse("auth-user-pass\n").auth_user_pass is True
    assert parse("<auth-user-pass>\nalice\ns3cret pass\n</auth-user-pass>\n").auth_user_pass == (
        "alice",
        "s3cret pass",
    )
    (tmp_path / "creds.txt").write_text("bob\r\nhunter2\r\n")
    assert parse("auth-user-pass creds.txt\n", base_dir=tmp_path).auth_user_pass == (
        "bob",
        "hunter2",
    )
    (tmp_path / "user.txt").write_text("carol\n")
    p = parse("auth-user-pass user.txt\n", base_dir=tmp_path)
    assert p.auth_user_pass is True
    assert any("no password" in w for w in p.warnings)
    with pytest.raises(ConfigError, match="line 9: option 'auth-user-pass'"):
        parse("auth-user-pass missing.txt\n", base_dir=tmp_path)


# ---- warnings, silent options, refused options ---------------------------------------


def test_unknown_and_unsupported_options_warn() -> None:
    p = parse("remote-random\nfloat\nmssfix 1400\nfrobnicate 3\nredirect-gateway def1\nup /x.sh\n")
    assert p.remote_random
    assert p.redirect_gateway == frozenset({"def1"})  # applied since issue 13
    assert p.script_up == "/x.sh"  # scripts since issue 13 (run with script-security 2)
    assert p.warnings == [
        f"option '{name}' (line {n}) is not supported and was ignored"
        for n, name in [
            (10, "float"),
            (11, "mssfix"),
            (12, "frobnicate"),
        ]
    ]


def test_silent_options_give_no_warning() -> None:
    extra = "".join(f"{name} x\n" for name in sorted(SILENT_OPTIONS))
    assert parse(extra + "setenv CLIENT_CERT 0\n").warnings == []


@pytest.mark.parametrize("name", sorted(UNSAFE_OPTIONS))
def test_unsafe_options_are_errors(name: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(f"{name} something\n")
    msg = one_line_error(exc)
    assert msg.startswith(f"line 9: option '{name}': is not supported: ")


def test_mode() -> None:
    assert parse("mode p2p\n").warnings == []
    with pytest.raises(ConfigError, match="server configuration"):
        parse("mode server\n")


def test_setenv_opt_and_ignore_unknown_option() -> None:
    p = parse("setenv opt block-outside-dns\nsetenv opt frob 1\nsetenv opt verb 5\n")
    assert p.verb == 5
    assert p.warnings == ["option 'frob' (line 10) is not supported and was ignored"]
    p = parse("ignore-unknown-option frob --zap\nfrob 1\nzap\nwhatever\n")
    assert p.warnings == ["option 'whatever' (line 12) is not supported and was ignored"]
    with pytest.raises(ConfigError, match="tls-verify"):
        parse("ignore-unknown-option tls-verify\ntls-verify /bin/true\n")


def test_source_prefix_on_errors() -> None:
    with pytest.raises(ConfigError) as exc:
        parse("verb x\n", source="corp.ovpn")
    assert one_line_error(exc).startswith("corp.ovpn: line 9: option 'verb'")


# ---- connection blocks ---------------------------------------------------------------


def test_connection_blocks() -> None:
    text = (
        f"client\ndev tun\nproto tcp\nremote ignored.example\n<ca>\n{CA}</ca>\n"
        "<connection>\nremote a.example 1195\nproto udp\nnobind\n</connection>\n"
        "<connection>\nremote b.example 443 tcp\n</connection>\n"
    )
    p = parse_profile(text)
    assert p.remotes == [Remote("a.example", 1195, "udp")]
    assert p.nobind
    assert p.connections == [
        {"remote": ["a.example", "1195"], "proto": ["udp"], "nobind": []},
        {"remote": ["b.example", "443", "tcp"]},
    ]
    assert (
        "option 'remote' (line 4) is ignored because <connection> blocks are present" in p.warnings
    )
    # the second block is a complete profile of its own, tried after the first
    assert not any("only the first" in w for w in p.warnings)
    (alt,) = p.alternatives
    assert alt.remotes == [Remote("b.example", 443, "tcp")]
    assert not alt.nobind and alt.ca == p.ca


def test_connection_inherits_global_defaults_and_inline_tls_auth() -> None:
    text = (
        f"client\ndev tun\nport 443\nproto tcp\n<ca>\n{CA}</ca>\n"
        f"<connection>\nremote a\n<tls-auth>\n{STATIC_KEY}</tls-auth>\nkey-direction 1\n</connection>\n"
    )
    p = parse_profile(text)
    assert p.remotes == [Remote("a", 443, "tcp")]
    assert p.tls_auth == STATIC_KEY and p.key_direction == 1
    assert p.connections[0]["tls-auth"] == [STATIC_KEY]


@pytest.mark.parametrize(
    ("block", "fragment"),
    [
        ("remote a\nverb 3\n", "line 10: option 'verb': is not allowed inside a <connection>"),
        ("nobind\n", "line 8: option 'connection': block has no 'remote'"),
        (
            "remote a\nremote b\n",
            "line 10: option 'remote': a <connection> block may hold only one",
        ),
        ("remote a\n<connection>\nremote b\n</connection>\n", "missing </connection>"),
    ],
)
def test_connection_errors(block: str, fragment: str) -> None:
    text = f"client\ndev tun\n<ca>\n{CA}</ca>\n<connection>\n{block}</connection>\n"
    with pytest.raises(ConfigError) as exc:
        parse_profile(text)
    assert fragment in one_line_error(exc)


# ---- realistic profiles ---------------------------------------------------------------

# Debian's /usr/share/doc/openvpn/examples/sample-config-files/client.conf, comments kept.
DEBIAN_CLIENT_CONF = """\
##############################################
# Sample client-side OpenVPN 2.6 config file #
# for connecting to multi-client server.     #
##############################################

# Specify that we are a client and that we
# will be pulling certain config file directives
# from the server.
client

# Use the same setting as you are using on
# the server.
;dev tap
dev tun

# Windows needs the TAP-Win32 adapter name
;dev-node MyTap

;proto tcp
proto udp

# The hostname/IP and port of the server.
remote my-server-1 1194
;remote my-server-2 1194

;remote-random

resolv-retry infinite

nobind

;user openvpn
;group openvpn

persist-key
persist-tun

;http-proxy-retry # retry on connection failures
;http-proxy [proxy server] [proxy port #]

;mute-replay-warnings

ca ca.crt
cert client.crt
key client.key

remote-cert-tls server

;data-ciphers AES-256-GCM:AES-128-GCM:?CHACHA20-POLY1305:AES-256-CBC
;tls-auth ta.key 1

verb 3

;mute 20
"""


def test_debian_sample_client_conf(tmp_path: Path) -> None:
    write_keys(tmp_path)
    conf = tmp_path / "client.conf"
    conf.write_text(DEBIAN_CLIENT_CONF)
    p = load_profile(conf)
    assert p.remotes == [Remote("my-server-1", 1194, "udp")]
    assert (p.ca, p.cert, p.key) == (CA, CERT, KEY)
    assert p.pull and p.tls_client and p.nobind and p.persist_key and p.persist_tun
    assert p.resolv_retry == math.inf
    assert p.remote_cert_tls == "server"
    assert p.verb == 3
    assert p.tls_auth is None
    assert p.warnings == []
    assert p.source == str(conf)


COMMERCIAL = f"""\
# Generated by ExampleVPN for user alice
client
dev tun
proto udp
remote nl1.examplevpn.net 1194
remote nl2.examplevpn.net 1194
remote nl3.examplevpn.net 443 tcp-client
remote-random
remote-random-hostname
resolv-retry infinite
nobind
persist-key
persist-tun
cipher AES-256-CBC
data-ciphers AES-256-GCM:AES-128-GCM:AES-256-CBC
auth SHA512
tls-client
tls-version-min 1.2
verify-x509-name "C=NL, O=ExampleVPN, CN=server.examplevpn.net"
remote-cert-tls server
auth-user-pass
auth-nocache
reneg-sec 0
comp-lzo no
mute-replay-warnings
verb 3
mute 10
sndbuf 524288
rcvbuf 524288
setenv CLIENT_CERT 0
script-security 2
block-outside-dns
explicit-exit-notify
key-direction 1
<ca>
{CA}</ca>
<tls-auth>
{STATIC_KEY}</tls-auth>
"""


def test_commercial_provider_profile(tmp_path: Path) -> None:
    path = tmp_path / "examplevpn-nl.ovpn"
    path.write_text(COMMERCIAL)
    p = load_profile(path)
    assert p.remotes == [
        Remote("nl1.examplevpn.net", 1194, "udp"),
        Remote("nl2.examplevpn.net", 1194, "udp"),
        Remote("nl3.examplevpn.net", 443, "tcp"),
    ]
    assert p.cipher == "AES-256-CBC"
    assert p.data_ciphers == ["AES-256-GCM", "AES-128-GCM", "AES-256-CBC"]
    assert p.auth == "SHA512"
    assert p.verify_x509_name == ("C=NL, O=ExampleVPN, CN=server.examplevpn.net", "subject")
    assert p.auth_user_pass is True
    assert p.reneg_sec == 0
    assert p.compression == "lzo-no"
    assert p.tls_auth == STATIC_KEY and p.key_direction == 1
    assert p.explicit_exit_notify == 1
    assert p.ca == CA and p.cert is None
    assert p.remote_random
    assert p.warnings == [
        "option 'remote-random-hostname' (line 9) is not supported and was ignored",
    ]


def test_load_profile_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read profile") as exc:
        load_profile(tmp_path / "missing.ovpn")
    one_line_error(exc)
    (tmp_path / "bin.ovpn").write_bytes(b"\xff\xfe\x00client")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_profile(tmp_path / "bin.ovpn")
