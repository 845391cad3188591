"""The server role holding key 0 for a verify script (`verify_auth`): AuthRequest out,
keys and PUSH_REPLY only after `answer_auth(True)`, AUTH_FAILED and an end after a refusal."""

from __future__ import annotations

from helpers.keyschedule_pair import Pair, server_config

from trivpn.messages import AuthRequest, ClientReady, InstallKey, TunnelUp
from trivpn.tlssession.control import Fatal, Restart
from trivpn.tlssession.keyschedule import Event


def _of(events: list[Event], kind: type) -> list[Event]:
    return [e for e in events if isinstance(e, kind)]


def test_server_holds_the_first_key_until_the_script_accepts() -> None:
    p = Pair(server=server_config(verify_auth=True), password="open sesame")
    p.connect()
    (req,) = _of(p.server.events, AuthRequest)
    assert isinstance(req, AuthRequest)
    assert (req.username, req.password) == ("alice", "open sesame")
    assert "CN=" in req.peer_subject
    assert "open sesame" not in repr(req)
    assert not _of(p.server.events, InstallKey) and not _of(p.server.events, ClientReady)
    assert not _of(p.client.events, TunnelUp)  # no PUSH_REPLY yet
    p.advance(1)  # the client's PUSH_REQUEST waits too
    assert not _of(p.client.events, TunnelUp)
    p.server.ks.answer_auth(True, "", p.now)
    p.pump()
    assert len(_of(p.server.events, InstallKey)) == 1 and len(_of(p.server.events, ClientReady)) == 1
    assert len(_of(p.client.events, TunnelUp)) == 1
    assert p.client.installed[0] == p.server.installed[0]
    p.server.ks.answer_auth(False, "late", p.now)  # a stray answer changes nothing
    p.pump()
    assert not p.server.ks.closed and not p.client.ks.closed


def test_refused_client_gets_auth_failed_and_the_session_ends() -> None:
    p = Pair(server=server_config(verify_auth=True))
    p.connect()
    assert _of(p.server.events, AuthRequest)
    p.server.ks.answer_auth(False, "", p.now)
    p.pump()
    (fatal,) = _of(p.client.events, Fatal)
    assert isinstance(fatal, Fatal) and "AUTH_FAILED" in fatal.reason
    assert not _of(p.server.events, InstallKey)
    p.advance(6)  # the scheduled end, after the AUTH_FAILED had time to leave
    assert len(_of(p.server.events, Fatal)) == 1 and p.server.ks.closed


def test_without_an_answer_the_hand_window_ends_the_session() -> None:
    p = Pair(server=server_config(verify_auth=True, hand_window=5.0))
    p.connect()
    p.run_until_idle(6)
    assert p.server.ks.closed and not _of(p.server.events, InstallKey)


def test_without_verify_auth_nothing_is_asked() -> None:
    p = Pair()
    p.connect()
    assert not _of(p.server.events, AuthRequest) and _of(p.server.events, ClientReady)


def _renegotiating_pair() -> Pair:
    p = Pair(server=server_config(verify_auth=True, reauth=True), password="open sesame")
    p.connect()
    p.server.ks.answer_auth(True, "", p.now)
    p.pump()
    assert len(_of(p.server.events, InstallKey)) == 1
    assert p.client.ks.renegotiate("test", p.now)
    p.pump()
    return p


def test_reauth_holds_a_renegotiated_key_until_the_credentials_pass_again() -> None:
    p = _renegotiating_pair()
    reqs = _of(p.server.events, AuthRequest)
    assert [r.key_id for r in reqs if isinstance(r, AuthRequest)] == [0, 1]
    assert isinstance(reqs[1], AuthRequest) and reqs[1].password == "open sesame"
    assert len(_of(p.server.events, InstallKey)) == 1  # key 1 is held
    p.server.ks.answer_auth(True, "", p.now, key_id=1)
    p.pump()
    assert [k.key_id for k in _of(p.server.events, InstallKey) if isinstance(k, InstallKey)] == [0, 1]
    p.server.ks.answer_auth(True, "", p.now, key_id=1)  # a repeated answer changes nothing
    assert len(_of(p.server.events, InstallKey)) == 2


def test_reauth_refusal_sends_auth_failed_and_ends_the_session() -> None:
    p = _renegotiating_pair()
    p.server.ks.answer_auth(False, "SESSION: token expired", p.now, key_id=1)
    p.pump()
    assert len(_of(p.server.events, InstallKey)) == 1 and p.server.ks.pending is None
    (restart,) = _of(p.client.events, Restart)  # the client drops its token and reconnects
    assert isinstance(restart, Restart) and restart.auth_token_expired
    p.advance(6)
    assert p.server.ks.closed
