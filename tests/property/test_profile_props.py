"""Property tests: option lines round-trip through render/parse; hostile text only
ever raises ConfigError (profiles) or RemoteProtocolError (pushed options)."""

from __future__ import annotations

import math
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from trivpn.errors import ConfigError, RemoteProtocolError
from trivpn.profile.options import MAX_PARMS, OPTION_PARM_SIZE, iter_options, tokenize_line
from trivpn.profile.profile import (
    CONNECTION_OPTIONS,
    SILENT_OPTIONS,
    UNSAFE_OPTIONS,
    Profile,
    Remote,
    parse_profile,
)
from trivpn.profile.push import PushedSettings, PushReplyAssembler, parse_push_options
from trivpn.redact import redact_option

NOWHERE = Path("/nonexistent-trivpn-test-dir")
CA = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUCA==\n-----END CERTIFICATE-----\n"

# Everything except the line separator and NUL (which no config line can hold).
token_chars = st.characters(blacklist_characters="\n\0", blacklist_categories=("Cs",))
tokens = st.text(token_chars, max_size=40)
styles = st.sampled_from(["plain", "double", "single"])


def render_token(tok: str, style: str) -> str:
    """Write ``tok`` so OpenVPN's tokenizer gives it back unchanged."""
    plain_ok = tok and not any(c in " \t\v\f\r\"'\\" for c in tok) and tok[0] not in "#;"
    if style == "plain" and plain_ok:
        return tok
    if style == "single" and "'" not in tok:
        return f"'{tok}'"
    return '"' + tok.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_line(toks: list[str], style_list: list[str]) -> str:
    return " ".join(render_token(t, s) for t, s in zip(toks, style_list, strict=True))


def option_names() -> st.SearchStrategy[str]:
    # a name that iter_options keeps as is: not an inline tag, not "--" prefixed
    return tokens.filter(lambda s: not s.startswith("<") and not s.startswith("--"))


@st.composite
def option_lines(draw: st.DrawFn) -> list[str]:
    name = draw(option_names())
    args = draw(st.lists(tokens, max_size=MAX_PARMS - 1))
    return [name, *args]


@given(option_lines(), st.data())
def test_tokenize_round_trip(toks: list[str], data: st.DataObject) -> None:
    style_list = data.draw(st.lists(styles, min_size=len(toks), max_size=len(toks)))
    line = render_line(toks, style_list)
    assert tokenize_line(line) == toks
    assert tokenize_line("  " + line + " # trailing comment") == toks


@given(st.lists(option_lines(), max_size=8), st.data())
def test_iter_options_round_trip(lines: list[list[str]], data: st.DataObject) -> None:
    text_lines = []
    expected = []
    for toks in lines:
        style_list = data.draw(st.lists(styles, min_size=len(toks), max_size=len(toks)))
        text_lines.append(render_line(toks, style_list))
        expected.append((len(text_lines), toks))
        if data.draw(st.booleans()):
            text_lines.append("# comment")
        if data.draw(st.booleans()):
            tag = data.draw(st.sampled_from(["ca", "cert", "tls-crypt", "auth-user-pass"]))
            body = data.draw(
                st.lists(
                    st.text(token_chars.filter(lambda c: c != "\r"), max_size=30).filter(
                        lambda s, tag=tag: not s.lstrip().startswith(f"</{tag}>")
                    ),
                    max_size=4,
                )
            )
            text_lines.append(f"<{tag}>")
            expected.append((len(text_lines), [f"<{tag}>", "".join(b + "\n" for b in body)]))
            text_lines.extend(body)
            text_lines.append(f"</{tag}>")
    assert list(iter_options("\n".join(text_lines))) == expected


def test_tokens_never_exceed_limits() -> None:
    assert tokenize_line("a " + "b" * OPTION_PARM_SIZE)[1] == "b" * OPTION_PARM_SIZE


# ---- whole profiles ------------------------------------------------------------------

hostnames = st.from_regex(r"\A[a-z0-9]([a-z0-9.-]{0,30}[a-z0-9])?\Z")
protos = st.sampled_from(
    ["udp", "udp4", "udp6", "tcp", "tcp4", "tcp6", "tcp-client", "tcp4-client", "tcp6-client"]
)
ciphers = st.lists(
    st.sampled_from(["AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305", "AES-256-CBC"]),
    min_size=1,
    max_size=4,
)


@st.composite
def profiles(draw: st.DrawFn) -> tuple[str, Profile]:
    """A rendered profile plus the Profile we expect back from it."""
    lines = ["client", "dev tun", "<ca>", CA.rstrip("\n"), "</ca>"]
    remotes = []
    for host, port, proto in draw(
        st.lists(st.tuples(hostnames, st.integers(1, 65535), protos), min_size=1, max_size=4)
    ):
        lines.append(f"remote {host} {port} {proto}")
        normal = proto.removesuffix("-client")
        remotes.append(Remote(host, port, normal))
    expected = Profile(remotes=remotes, ca=CA, pull=True, tls_client=True)
    for flag in ("persist-tun", "persist-key", "nobind", "mute-replay-warnings"):
        if draw(st.booleans()):
            lines.append(flag)
            setattr(expected, flag.replace("-", "_"), True)
    if draw(st.booleans()):
        names = draw(ciphers)
        lines.append("data-ciphers " + ":".join(n.lower() for n in names))
        expected.data_ciphers = names
    if draw(st.booleans()):
        expected.verb = draw(st.integers(0, 11))
        lines.append(f"verb {expected.verb}")
    if draw(st.booleans()):
        retry = draw(st.one_of(st.just(math.inf), st.integers(0, 10**6).map(float)))
        expected.resolv_retry = retry
        lines.append(f"resolv-retry {'infinite' if retry == math.inf else int(retry)}")
    if draw(st.booleans()):
        name = draw(st.text(token_chars, min_size=1, max_size=50))
        kind = draw(st.sampled_from(["subject", "name", "name-prefix"]))
        expected.verify_x509_name = (name, kind)
        lines.append(f"verify-x509-name {render_token(name, 'double')} {kind}")
    if draw(st.booleans()):
        ka = draw(st.tuples(st.integers(0, 3600), st.integers(0, 3600)))
        expected.keepalive = ka
        lines.append(f"keepalive {ka[0]} {ka[1]}")
    draw(st.randoms()).shuffle(lines)  # option order does not matter here
    # the shuffle may split the <ca> block; rebuild it in one piece at the end
    lines = [ln for ln in lines if ln not in ("<ca>", "</ca>", CA.rstrip("\n"))]
    lines += ["<ca>", CA.rstrip("\n"), "</ca>"]
    # remotes keep their relative order after the shuffle
    expected.remotes = [r for ln in lines for r in _remote_of(ln)]
    return "\n".join(lines) + "\n", expected


def _remote_of(line: str) -> list[Remote]:
    if not line.startswith("remote "):
        return []
    _, host, port, proto = line.split()
    return [Remote(host, int(port), proto.removesuffix("-client"))]


@given(profiles())
def test_profile_round_trip(case: tuple[str, Profile]) -> None:
    text, expected = case
    assert parse_profile(text, base_dir=NOWHERE) == expected


# ---- robustness: only our own errors escape ------------------------------------------

vocabulary = sorted(
    {
        "client",
        "dev",
        "dev-type",
        "proto",
        "remote",
        "port",
        "ca",
        "cert",
        "key",
        "tls-auth",
        "tls-crypt",
        "key-direction",
        "verify-x509-name",
        "data-ciphers",
        "cipher",
        "comp-lzo",
        "compress",
        "auth-user-pass",
        "keepalive",
        "setenv",
        "ignore-unknown-option",
        "tls-version-min",
        "resolv-retry",
        "explicit-exit-notify",
        "reneg-sec",
        "tun-mtu",
        "<connection>",
        "</connection>",
        "<ca>",
        "</ca>",
        "opt",
    }
    | SILENT_OPTIONS
    | set(UNSAFE_OPTIONS)
    | CONNECTION_OPTIONS
)
words = st.one_of(st.sampled_from(vocabulary), st.text(max_size=12), st.from_regex(r"\A\d{1,6}\Z"))


@given(st.lists(st.lists(words, max_size=5), max_size=12))
def test_option_soup_raises_only_config_error(soup: list[list[str]]) -> None:
    text = "\n".join(" ".join(line) for line in soup)
    try:
        result = parse_profile(text, base_dir=NOWHERE)
    except ConfigError as exc:
        assert "\n" not in str(exc)
    else:
        assert result.remotes and result.ca


@given(st.text(max_size=400))
def test_arbitrary_text_raises_only_config_error(text: str) -> None:
    try:
        parse_profile(text, base_dir=NOWHERE)
    except ConfigError as exc:
        assert "\n" not in str(exc)


push_vocabulary = [
    "ifconfig",
    "ifconfig-ipv6",
    "route",
    "route-ipv6",
    "route-gateway",
    "topology",
    "redirect-gateway",
    "dhcp-option",
    "DNS",
    "DOMAIN",
    "dns",
    "server",
    "address",
    "search-domains",
    "ping",
    "peer-id",
    "cipher",
    "key-derivation",
    "protocol-flags",
    "tun-mtu",
    "auth-token",
    "comp-lzo",
    "compress",
    "push-continuation",
    "10.8.0.1",
    "255.255.255.0",
    "fd00::1/64",
    "net_gateway",
    "subnet",
]
push_words = st.one_of(
    st.sampled_from(push_vocabulary), st.text(max_size=10), st.from_regex(r"\A-?\d{1,9}\Z")
)


@given(st.lists(st.lists(push_words, max_size=5).map(" ".join), max_size=10))
def test_push_soup_raises_only_remote_protocol_error(options: list[str]) -> None:
    try:
        s = parse_push_options(options)
    except RemoteProtocolError as exc:
        assert "\n" not in str(exc)
    else:
        # kept as logged: an auth-token's value is redacted (trivpn/redact.py)
        assert isinstance(s, PushedSettings) and s.options == [redact_option(o) for o in options]
        s.ipv4_interface()  # validated values never blow up the helpers


@given(st.lists(st.text(max_size=200), max_size=5))
def test_assembler_raises_only_remote_protocol_error(messages: list[str]) -> None:
    asm = PushReplyAssembler()
    for m in messages:
        try:
            result = asm.feed("PUSH_REPLY," + m)
        except RemoteProtocolError:
            continue
        if result is not None:
            try:
                parse_push_options(result)
            except RemoteProtocolError:
                pass
