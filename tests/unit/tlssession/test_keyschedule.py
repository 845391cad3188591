"""KeySchedule: a client and a server schedule with real TLS, joined in memory."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TypeVar

import pytest
from helpers.keyschedule_pair import (
    BASE_PUSH,
    CLIENT_SID,
    FULL_IV_PROTO,
    SERVER_SID,
    Pair,
    client_config,
    client_peer_info,
    server_config,
)

from trivpn.errors import ConfigError
from trivpn.messages import (
    AuthPending,
    ClientReady,
    InstallKey,
    KeyUsage,
    ResetComplete,
    RetireKey,
    SoftReset,
    TunnelUp,
)
from trivpn.tlssession.control import auth_pending_timeout
from trivpn.tlssession.core import PUSH_BUNDLE_LIMIT, push_reply_messages
from trivpn.tlssession.keymethod import (
    IV_PROTO_CC_EXIT_NOTIFY,
    IV_PROTO_DATA_V2,
    IV_PROTO_REQUEST_PUSH,
    IV_PROTO_TLS_KEY_EXPORT,
    occ_options_string,
)
from trivpn.tlssession.keyschedule import Fatal, KeyScheduleConfig, Restart, next_key_id
from trivpn.tlssession.negotiation import (
    NO_SHARED_CIPHER,
    CipherPolicy,
    NegotiationError,
    PeerInfo,
    negotiate,
)

T = TypeVar("T")


def _of(events: Sequence[object], kind: type[T]) -> list[T]:
    return [e for e in events if isinstance(e, kind)]


def _agree(p: Pair) -> None:
    """Both ends have the same primary key with the same key block."""
    c, s = p.client, p.server
    key_id = c.ks.primary
    assert key_id is not None and s.ks.primary == key_id
    assert c.installed[key_id] == s.installed[key_id]


# -- the first key --------------------------------------------------------------------------


def test_first_key_with_every_2_6_feature() -> None:
    p = Pair()
    p.connect()
    _agree(p)
    up = _of(p.client.events, TunnelUp)
    ready = _of(p.server.events, ClientReady)
    assert len(up) == 1 and len(ready) == 1
    assert up[0].cipher == "AES-256-GCM" and up[0].key_derivation == "tls-ekm"
    r = ready[0]
    assert isinstance(r, ClientReady)
    assert r.options == (*BASE_PUSH, "peer-id 7", "cipher AES-256-GCM", "protocol-flags cc-exit tls-ekm dyn-tls-crypt")
    assert r.username == "alice" and r.password == "secret" and "secret" not in repr(r)
    assert r.peer_info.iv_proto == FULL_IV_PROTO and "trivpn-test-client" in r.peer_subject
    c_key = _of(p.client.events, InstallKey)[0]
    s_key = _of(p.server.events, InstallKey)[0]
    assert isinstance(c_key, InstallKey) and isinstance(s_key, InstallKey)
    assert (c_key.peer_id, s_key.peer_id) == (7, 7)
    assert (c_key.ping_interval, c_key.ping_restart) == (10.0, 60.0)  # pushed values win
    assert (s_key.ping_interval, s_key.ping_restart) == (10.0, 120.0)  # the server's own
    assert p.client.wrap_keys == p.server.wrap_keys and len(p.client.wrap_keys) == 1
    assert p.client.ks.cc_exit and p.server.ks.cc_exit


def test_server_waits_for_push_request_without_request_push_bit() -> None:
    iv = FULL_IV_PROTO & ~IV_PROTO_REQUEST_PUSH
    p = Pair(peer_info=client_peer_info(iv_proto=iv))
    p.connect()  # the client's PUSH_REQUEST follows its key exchange at once
    _agree(p)
    assert len(_of(p.client.events, TunnelUp)) == 1
    server = p.server.ks
    sent_at = server._pushed_at
    server._on_push_request(p.now + 10)  # a repeat within 30 s is ignored
    assert server._pushed_at == sent_at
    server._on_push_request(p.now + 31)
    assert server._pushed_at == p.now + 31


def test_prf_when_the_client_cannot_export_keys() -> None:
    iv = IV_PROTO_DATA_V2 | IV_PROTO_REQUEST_PUSH | IV_PROTO_CC_EXIT_NOTIFY
    p = Pair(peer_info=client_peer_info(iv_proto=iv))
    p.connect()
    _agree(p)
    up = _of(p.client.events, TunnelUp)[0]
    assert isinstance(up, TunnelUp) and up.key_derivation == "tls1-prf"
    assert "protocol-flags cc-exit" in up.settings.options
    assert p.client.wrap_keys == [] and not p.client.ks.dynamic_tls_crypt


def test_ekm_without_cc_exit_is_announced_with_key_derivation() -> None:
    iv = IV_PROTO_DATA_V2 | IV_PROTO_REQUEST_PUSH | IV_PROTO_TLS_KEY_EXPORT
    p = Pair(peer_info=client_peer_info(iv_proto=iv))
    p.connect()
    _agree(p)
    up = _of(p.client.events, TunnelUp)[0]
    assert isinstance(up, TunnelUp) and up.key_derivation == "tls-ekm"
    assert "key-derivation tls-ekm" in up.settings.options
    assert not p.client.ks.cc_exit and not p.client.ks.send_exit(p.now)  # caller uses OCC EXIT


def test_ncp_takes_the_servers_preference() -> None:
    server = server_config(policy=CipherPolicy(["CHACHA20-POLY1305", "AES-128-GCM"]))
    p = Pair(server=server, peer_info=client_peer_info(ciphers=["AES-256-GCM", "AES-128-GCM"]))
    p.connect()
    _agree(p)
    assert p.client.ks.cipher == p.server.ks.cipher == "AES-128-GCM"


def test_ncp_without_a_shared_cipher_refuses_the_client() -> None:
    server = server_config(policy=CipherPolicy(["CHACHA20-POLY1305"]))
    p = Pair(server=server, peer_info=client_peer_info(ciphers=["AES-256-GCM"]))
    p.connect()
    fatal = _of(p.client.events, Fatal)
    assert len(fatal) == 1 and NO_SHARED_CIPHER in fatal[0].reason
    assert not _of(p.server.events, InstallKey)
    p.advance(4)
    assert not _of(p.server.events, Fatal)
    p.advance(2)  # the scheduled exit: the AUTH_FAILED had time to leave
    assert len(_of(p.server.events, Fatal)) == 1 and p.server.ks.closed


def test_server_requiring_ekm_refuses_a_prf_client() -> None:
    server = server_config(policy=CipherPolicy(["AES-256-GCM"], key_derivation="ekm"))
    p = Pair(server=server, peer_info=client_peer_info(iv_proto=IV_PROTO_DATA_V2 | IV_PROTO_REQUEST_PUSH))
    p.connect()
    assert len(_of(p.client.events, Fatal)) == 1


def test_negotiate_without_cipher_information() -> None:
    policy = CipherPolicy(["AES-256-GCM", "AES-128-CBC"], fallback="AES-256-GCM")
    bare = PeerInfo.parse("IV_VER=2.4.0\nIV_PROTO=2\n")
    occ = occ_options_string(proto="udp", tls_client=True, tls_auth=False, key_direction=None)
    neg = negotiate(bare, occ + ",cipher AES-128-CBC", policy, 3)
    assert neg.cipher == "AES-128-CBC" and not neg.push_cipher and neg.peer_id == 3
    assert negotiate(bare, occ, policy, None).cipher == "AES-256-GCM"  # the fallback
    with pytest.raises(NegotiationError):
        negotiate(bare, occ, CipherPolicy(["AES-256-GCM"]), None)
    ncp2 = PeerInfo.parse("IV_NCP=2\nIV_PROTO=0\n")
    neg2 = negotiate(ncp2, occ, CipherPolicy(["AES-128-GCM"]), 5)
    assert neg2.cipher == "AES-128-GCM" and neg2.push_cipher and neg2.peer_id is None  # no DATA_V2


def test_peer_info_parse_is_bounded_and_tolerant() -> None:
    info = PeerInfo.parse("IV_PROTO=99999999999999\nnonsense\n=x\nIV_CIPHERS=aes-256-gcm:\n" + "A=1\n" * 10000)
    assert info.iv_proto == 0 and info.ciphers == ("AES-256-GCM",) and len(info.items) <= 256


def test_long_push_reply_is_split_and_reassembled() -> None:
    routes = tuple(f"route 10.{i // 250}.{i % 250}.0 255.255.255.0" for i in range(120))
    p = Pair(server=server_config(push=BASE_PUSH + routes))
    p.connect()
    up = _of(p.client.events, TunnelUp)[0]
    assert isinstance(up, TunnelUp) and len(up.settings.routes) == 120
    messages = push_reply_messages(BASE_PUSH + routes)
    assert len(messages) > 1 and all(len(m) <= PUSH_BUNDLE_LIMIT + 25 for m in messages)
    assert messages[-1].endswith(",push-continuation 1") and messages[0].endswith(",push-continuation 2")
    assert push_reply_messages([]) == ["PUSH_REPLY"]


def test_push_source_callable_sees_the_peer_info() -> None:
    seen: list[PeerInfo] = []

    def push(peer: PeerInfo) -> list[str]:
        seen.append(peer)
        return ["ifconfig 10.9.0.2 255.255.255.0", "topology subnet"]

    p = Pair(server=server_config(push=push))
    p.connect()
    assert seen and seen[0].username == "alice"
    up = _of(p.client.events, TunnelUp)[0]
    assert isinstance(up, TunnelUp) and up.settings.ifconfig_local == "10.9.0.2"


def test_bad_push_options_end_the_server_session() -> None:
    p = Pair(server=server_config(push=("route 10.0.0.0,255.0.0.0",)))
    p.connect()
    assert len(_of(p.server.events, Fatal)) == 1


def test_client_without_pull_uses_the_fallback_cipher() -> None:
    client = client_config(pull=False, policy=CipherPolicy(["AES-256-GCM"], fallback="AES-256-GCM"))
    p = Pair(client=client)
    p.connect()
    up = _of(p.client.events, TunnelUp)
    assert len(up) == 1 and up[0].key_derivation == "tls1-prf"


def test_untrusted_server_certificate_is_a_restart_not_an_exit() -> None:
    from helpers.keyschedule_pair import pki, server_factory

    from trivpn.tlssession.core import TLSSession
    from trivpn.tlssession.keyschedule import KeySchedule
    from trivpn.tlssession.tls import TLSConfig

    cfg = TLSConfig(ca_pem=pki().other_ca_cert, cert_pem=pki().client_cert, key_pem=pki().client_key)
    p = Pair()
    p.client.ks = KeySchedule(client_config(), lambda k, t: TLSSession(cfg, options_string="V4"))
    p.server.ks = KeySchedule(server_config(), server_factory())
    p.connect()
    assert not _of(p.client.events, Fatal) and p.client.ks.closed
    (end,) = _of(p.client.events, Restart)
    assert isinstance(end, Restart) and "server certificate verification failed" in end.reason


def test_garbage_instead_of_tls_is_a_restart_for_the_client() -> None:
    """Bytes injected on the path in place of the server's handshake end the session with
    Restart (a TLS error), never Fatal."""
    p = Pair()
    p.start()
    p.client.ks.items_to_send(p.now)  # the ClientHello leaves
    p.client.ks.receive_ciphertext(0, b"\x15\x03\x03\x00\x02\x02\x28" + bytes(64), p.now)  # a forged alert
    p.client.collect()
    assert not _of(p.client.events, Fatal) and p.client.ks.closed
    (end,) = _of(p.client.events, Restart)
    assert isinstance(end, Restart) and end.reason.startswith("TLS failed")


def test_unusable_push_reply_is_a_restart_not_an_exit() -> None:
    """OpenVPN's process-push-msg-failed: the client restarts; it does not give up."""
    p = Pair(
        client=client_config(policy=CipherPolicy(["AES-256-GCM"])),
        server=server_config(policy=CipherPolicy(["AES-128-GCM"])),
        peer_info=client_peer_info(ciphers=["AES-128-GCM"]),  # announces what it then refuses
    )
    p.connect()
    assert not _of(p.client.events, Fatal) and not _of(p.client.events, TunnelUp)
    (end,) = _of(p.client.events, Restart)
    assert isinstance(end, Restart) and "not in data-ciphers" in end.reason and p.client.ks.closed


# -- the hand window ------------------------------------------------------------------------


def test_first_key_must_complete_within_the_hand_window() -> None:
    p = Pair(client=client_config(hand_window=30))
    p.client.ks.receive_reset(ResetComplete(CLIENT_SID, SERVER_SID), p.now)  # the server stays silent
    p.client.ks.items_to_send(p.now)
    p.now = 29.0
    p.client.ks.handle_timer(p.now)
    assert not p.client.ks.events()
    p.now = 30.0
    assert p.client.ks.get_timer() is not None and p.client.ks.get_timer() <= 30.0  # type: ignore[operator]
    p.client.ks.handle_timer(p.now)
    (ev,) = p.client.ks.events()
    assert isinstance(ev, Restart) and "30 seconds" in ev.reason


def test_a_server_session_without_a_reset_ends_after_the_hand_window() -> None:
    """A TCP connection that sends nothing, half a length or a stalled packet never gives
    the server a reset; its hand window counts from `begin` (the accept) all the same, so
    it holds its max-clients slot hand_window seconds (here 30), not for ever."""
    p = Pair(server=server_config(hand_window=30))
    ks = p.server.ks
    assert ks.get_timer() is None  # before: no deadline at all without a reset
    ks.begin(100.0)
    assert ks.get_timer() == 130.0
    ks.handle_timer(129.9)
    assert not ks.closed
    ks.handle_timer(130.0)
    (ev,) = ks.events()
    assert isinstance(ev, Restart) and "30 seconds" in ev.reason and ks.closed
    # a reset that comes late keeps the window of the session's start, not a new one
    late = Pair(server=server_config(hand_window=30))
    late.server.ks.begin(100.0)
    late.server.ks.receive_reset(ResetComplete(SERVER_SID, CLIENT_SID), 125.0)
    assert late.server.ks.get_timer() == 130.0


def test_auth_pending_extends_the_hand_window() -> None:
    iv = FULL_IV_PROTO & ~IV_PROTO_REQUEST_PUSH
    p = Pair(client=client_config(hand_window=30), peer_info=client_peer_info(iv_proto=iv))
    p.server.ks._on_push_request = lambda now: None  # type: ignore[method-assign]  # still deciding
    p.connect()
    p.server.ks.sessions[0].send_control_message("AUTH_PENDING,timeout 120")
    p.pump()
    ks = p.client.ks
    assert AuthPending(120.0) in p.client.events
    ks.handle_timer(100.0)
    assert not ks.closed
    ks.handle_timer(120.0)
    assert ks.closed and isinstance(ks.events()[-1], Restart)


def test_renegotiation_the_peer_never_answers_keeps_the_key() -> None:
    p = Pair(client=client_config(hand_window=20, reneg_sec=100))
    p.connect()
    p.pump()
    assert p.client.ks.renegotiate("test", p.now)
    assert not p.client.ks.renegotiate("again", p.now)  # one at a time
    p.pump(copies=lambda d, i: 0 if d == "c2s" else 1)  # the soft reset is lost for good
    p.advance(19)
    assert p.client.ks.pending == 1
    p.advance(1)
    assert p.client.ks.pending is None and p.client.ks.primary == 0
    assert not _of(p.client.events, Restart)
    p.advance(100)  # reneg-sec, counted from the failure, tries the next key id
    _agree(p)
    assert p.client.ks.primary == 2 and p.server.ks.primary == 2


def test_renegotiation_with_broken_tls_keeps_the_key() -> None:
    p = Pair(client=client_config(reneg_sec=50))
    p.connect()
    p.client.ks.renegotiate("test", p.now)
    p.pump(copies=lambda d, i: 0 if isinstance(i, SoftReset) is False and i.key_id == 1 and d == "s2c" else 1)
    p.client.ks.receive_ciphertext(1, b"\x15\x03\x03\x00\x02\x02\x28" * 3, p.now)  # a TLS alert
    assert p.client.ks.pending is None and p.client.ks.primary == 0 and not p.client.ks.closed
    assert p.client.ks.get_timer() == p.now + 50


# -- renegotiation triggers -----------------------------------------------------------------


@pytest.mark.parametrize("who", ["client", "server"])
def test_reneg_sec_from_either_side(who: str) -> None:
    cfg = {"reneg_sec": 10.0}
    p = Pair(client=client_config(**(cfg if who == "client" else {})),
             server=server_config(**(cfg if who == "server" else {})))
    p.connect()
    p.advance(9)
    assert p.client.ks.primary == 0
    p.advance(1)
    _agree(p)
    assert p.client.ks.primary == 1 and p.client.ks.lame_duck == 0 and p.server.ks.lame_duck == 0
    p.advance(10)
    assert p.client.ks.primary == 2 and p.client.ks.renegotiations == 2


def test_key_ids_wrap_to_one_never_zero() -> None:
    p = Pair()
    p.connect()
    seen = []
    for i in range(9):
        (p.client if i % 2 else p.server).ks.renegotiate("test", p.now)
        p.pump()
        _agree(p)
        seen.append(p.client.ks.primary)
    assert seen == [1, 2, 3, 4, 5, 6, 7, 1, 2]
    assert [next_key_id(k) for k in (0, 6, 7)] == [1, 7, 1]


@pytest.mark.parametrize(
    ("cfg", "usage", "fires"),
    [
        ({"reneg_bytes": 1000}, KeyUsage(0, 1000, 1), True),
        ({"reneg_bytes": 1000}, KeyUsage(0, 999, 1), False),
        ({"reneg_pkts": 10}, KeyUsage(0, 5, 10), True),
        ({"reneg_pkts": 10}, KeyUsage(0, 5, 9), False),
        ({}, KeyUsage(0, 10**12, 10**9), False),
        ({}, KeyUsage(0, 0, 0, near_wrap=True), True),
    ],
)
def test_usage_triggers(cfg: dict[str, int], usage: KeyUsage, fires: bool) -> None:
    p = Pair(client=client_config(**cfg))
    p.connect()
    ks = p.client.ks
    ks.receive_usage(KeyUsage(0, 0, 0), p.now)  # the baseline of key 0
    ks.receive_usage(usage, p.now)
    assert (ks.pending == 1) is fires
    if fires:
        p.pump()
        assert ks.primary == 1


def test_usage_is_measured_per_key_and_after_each_trigger() -> None:
    p = Pair(client=client_config(reneg_bytes=100))
    p.connect()
    ks = p.client.ks
    ks.receive_usage(KeyUsage(None, 500, 5), p.now)  # no key in the data channel yet
    ks.receive_usage(KeyUsage(0, 500, 5), p.now)  # first sight of key 0: the baseline
    ks.receive_usage(KeyUsage(0, 599, 6), p.now)
    assert ks.pending is None
    ks.receive_usage(KeyUsage(0, 600, 6), p.now)
    assert ks.pending == 1
    p.pump()
    ks.receive_usage(KeyUsage(1, 650, 7), p.now)  # the new key: measured from here
    ks.receive_usage(KeyUsage(1, 700, 7), p.now)
    assert ks.pending is None


def test_lame_duck_is_retired_after_the_transition_window() -> None:
    p = Pair(client=client_config(transition_window=60), server=server_config(transition_window=60))
    p.connect()
    p.client.ks.renegotiate("test", p.now)
    p.pump()
    assert p.client.installed.keys() == {0, 1} and p.server.installed.keys() == {0, 1}
    p.advance(59)
    assert not _of(p.client.events, RetireKey)
    p.advance(1)
    assert _of(p.client.events, RetireKey) == [RetireKey(0)] == _of(p.server.events, RetireKey)
    assert p.client.ks.lame_duck is None and 0 not in p.client.ks.sessions
    assert p.client.ks.get_timer() is None  # nothing left to do: no reneg-sec in this test


# -- soft-reset races -----------------------------------------------------------------------


def test_both_ends_start_with_the_same_key_id() -> None:
    p = Pair()
    p.connect()
    p.client.ks.renegotiate("c", p.now)
    p.server.ks.renegotiate("s", p.now)
    p.pump()
    _agree(p)
    assert p.client.ks.primary == 1


def test_both_ends_start_with_different_key_ids_the_client_yields() -> None:
    p = Pair(client=client_config(hand_window=5), server=server_config(hand_window=5))
    p.connect()
    p.client.ks.renegotiate("lost", p.now)
    p.pump(copies=lambda d, i: 0 if d == "c2s" else 1)
    p.advance(5)  # the client gave key id 1 up; the server never heard of it
    p.client.ks.renegotiate("c", p.now)  # key id 2
    p.server.ks.renegotiate("s", p.now)  # key id 1
    p.pump()
    _agree(p)
    assert p.client.ks.primary == 1


def test_repeated_and_early_soft_resets_are_ignored() -> None:
    p = Pair()
    p.start()
    p.client.ks.receive_soft_reset(1, p.now)  # before the first key is up
    assert p.client.ks.pending == 0
    p.pump()
    p.server.ks.renegotiate("s", p.now)
    p.pump(copies=lambda d, i: 2 if isinstance(i, SoftReset) else 1)
    _agree(p)
    p.client.ks.receive_soft_reset(1, p.now)  # a late copy for the current key
    p.client.ks.receive_soft_reset(0, p.now)  # key id 0 is never renegotiated
    p.client.ks.receive_soft_reset(9, p.now)  # out of range
    assert p.client.ks.pending is None and not p.client.ks.items_to_send(p.now)


def test_a_soft_reset_while_a_key_is_pending_is_ignored_until_it_is_done() -> None:
    """The client asks for key 1, then at once for key 2: the server keeps negotiating key 1
    (OpenVPN honours a soft reset only once the newest key has its keys), so a client cannot
    restart key exchanges, and with reauth the verify script, back to back. Before, key 2
    replaced key 1 (and 3 replaced 2, ...)."""
    p = Pair()
    p.connect()
    srv = p.server.ks
    srv.receive_soft_reset(1, p.now)
    for key_id in (2, 3, 4):
        srv.receive_soft_reset(key_id, p.now)
        assert srv.pending == 1
    p.client.ks.renegotiate("c", p.now)  # the client's side of key 1
    p.pump()
    _agree(p)
    assert srv.primary == 1 and srv.pending is None
    srv.receive_soft_reset(2, p.now)  # key 1 is done: the next one is honoured
    assert srv.pending == 2


# -- control messages -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expect", "advance", "expired"),
    [
        ("AUTH_FAILED", Fatal, False, False),
        ("AUTH_FAILED,bad password", Fatal, False, False),
        ("AUTH_FAILED,TEMP[backoff 5]:busy", Restart, False, False),
        ("AUTH_FAILED,SESSION:token expired", Restart, False, True),
        ("HALT", Fatal, False, False),
        ("RESTART", Restart, False, False),
        ("RESTART,[N]server moves", Restart, True, False),
        ("RESTART,[P]keep", Restart, False, False),
        ("EXIT", Restart, False, False),
    ],
)
def test_client_control_messages(
    text: str, expect: type[Restart | Fatal], advance: bool, expired: bool
) -> None:
    p = Pair()
    p.connect()
    p.server.ks.sessions[0].send_control_message(text)
    p.pump()
    (ev,) = [e for e in p.client.events if isinstance(e, expect)]
    assert p.client.ks.closed
    if isinstance(ev, Restart):
        assert (ev.advance, ev.auth_token_expired) == (advance, expired)
    if text.startswith("AUTH_FAILED") and expect is Fatal:
        assert "AUTH_FAILED" in ev.reason


def test_auth_failed_session_before_any_push_is_fatal() -> None:
    p = Pair(server=server_config(push=()))
    p.start()
    p.server.ks.sessions[0].send_control_message("AUTH_FAILED,SESSION:expired")
    p.pump()
    assert _of(p.client.events, Fatal)


def test_info_and_unknown_messages_do_not_end_the_session() -> None:
    p = Pair()
    p.connect()
    for text in ("INFO,hello", "INFO_PRE,x", "CR_RESPONSE,abc", "SOMETHING"):
        p.server.ks.sessions[0].send_control_message(text)
    p.client.ks.sessions[0].send_control_message("INFO,from the client")
    p.pump()
    assert not p.client.ks.closed and not p.server.ks.closed
    assert p.client.ks.dropped_control_messages == 2


def test_a_flood_of_client_info_messages_is_logged_a_few_lines_then_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """200 INFO messages from one client within a minute: 10 "client says" lines, then one
    line with the count of the other 190 once the minute is over. Before, 200 lines."""
    p = Pair()
    p.connect()
    caplog.set_level(logging.INFO, logger="trivpn")
    for i in range(200):
        p.client.ks.sessions[0].send_control_message(f"INFO,flood {i}")
    p.pump()
    says = [r for r in caplog.records if "client says: INFO" in r.getMessage()]
    assert len(says) == 10 and p.server.ks.info_log.suppressed == 190
    deadline = p.server.ks.get_timer()
    assert deadline is not None and deadline <= p.now + 60
    p.advance(60)
    counts = [r.getMessage() for r in caplog.records if "more INFO messages" in r.getMessage()]
    assert counts == ["client sent 190 more INFO messages that were not logged (at most 10 lines per 60 s)"]
    assert p.server.ks.info_log.suppressed == 0 and not p.server.ks.closed


def test_exit_both_ways() -> None:
    p = Pair()
    p.connect()
    assert p.client.ks.send_exit(p.now)
    p.pump()
    (ev,) = _of(p.server.events, Restart)
    assert "EXIT" in ev.reason
    q = Pair()
    q.connect()
    assert q.server.ks.send_exit(q.now, advance=True)
    q.pump()
    (ev,) = _of(q.client.events, Restart)
    assert ev.advance


def test_closed_schedule_ignores_input() -> None:
    p = Pair()
    p.connect()
    p.server.ks.sessions[0].send_control_message("HALT")
    p.pump()
    ks = p.client.ks
    assert ks.closed and ks.get_timer() is None
    assert not ks.renegotiate("x", p.now) and not ks.send_exit(p.now)
    ks.receive_soft_reset(1, p.now)
    ks.receive_usage(KeyUsage(0, 1, 1, near_wrap=True), p.now)
    ks.handle_timer(p.now + 10**6)
    assert not ks.events() and not ks.items_to_send(p.now)


def test_auth_pending_timeout_parsing() -> None:
    assert auth_pending_timeout("AUTH_PENDING,timeout 120") == 120.0
    assert auth_pending_timeout("AUTH_PENDING,timeout 99999") == 3600.0
    assert auth_pending_timeout("AUTH_PENDING") == 60.0
    assert auth_pending_timeout("AUTH_PENDING,timeout x") == 60.0


def test_config_is_validated() -> None:
    policy = CipherPolicy(["AES-256-GCM"])
    for bad in ({"role": "peer"}, {"hand_window": 0}, {"reneg_bytes": -1}, {"wrap_key": b"x"}):
        with pytest.raises(ConfigError):
            KeyScheduleConfig(**{"role": "client", "policy": policy, **bad})  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        CipherPolicy(["AES-256-GCM"], key_derivation="magic")


def test_failed_attempts_never_reuse_a_key_id_in_use() -> None:
    p = Pair(client=client_config(hand_window=5))
    p.connect()
    p.client.ks.renegotiate("first", p.now)
    p.pump()
    assert p.client.ks.primary == 1
    tried = []
    for _ in range(7):  # every attempt is lost on the way: ids 2..7, then 1 is the primary
        p.client.ks.renegotiate("lost", p.now)
        tried.append(p.client.ks.pending)
        p.pump(copies=lambda d, i: 0 if d == "c2s" else 1)
        p.advance(5)
    assert tried == [2, 3, 4, 5, 6, 7, 2]
    p.client.ks.renegotiate("works", p.now)
    p.pump()
    _agree(p)
    assert p.client.ks.primary == 3 and p.client.ks.lame_duck == 1
