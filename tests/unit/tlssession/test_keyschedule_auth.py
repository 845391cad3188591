"""The server role holding key 0 for a verify script (`verify_auth`): AuthRequest out,
keys and PUSH_REPLY only after `answer_auth(True)`, AUTH_FAILED and an end after a refusal."""

from __future__ import annotations

from helpers.keyschedule_pair import Pair, server_config

from trivpn.messages import AuthRequest, AuthTokenRenewed, ClientReady, InstallKey, TunnelUp
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


def _accepted(**kw: object) -> Pair:
    p = Pair(server=server_config(verify_auth=True, reauth=True, **kw), password="open sesame")
    p.connect()
    p.server.ks.answer_auth(True, "", p.now)
    p.pump()
    return p


def test_a_renegotiated_key_waits_for_the_same_check() -> None:
    """OpenVPN re-authenticates on renegotiation (script, management REAUTH): the new key is
    installed only after the answer; the old one carries the traffic meanwhile."""
    p = _accepted()
    p.advance(1)
    assert p.client.ks.renegotiate("test", p.now)
    p.pump()
    reauth = _of(p.server.events, AuthRequest)[-1]
    assert isinstance(reauth, AuthRequest) and reauth.key_id == 1
    assert (reauth.username, reauth.password) == ("alice", "open sesame") and "IV_VER=" in reauth.peer_info
    assert p.server.ks.primary == 0 and p.server.ks.pending == 1
    assert [e.key_id for e in _of(p.server.events, InstallKey)] == [0]  # type: ignore[attr-defined]
    p.server.ks.answer_auth(True, "", p.now, key_id=1)
    p.pump()
    assert p.server.ks.primary == 1 and p.server.ks.renegotiations == 1
    assert not p.server.ks.closed and not p.client.ks.closed


def test_a_refused_reauth_ends_the_session() -> None:
    p = _accepted()
    p.advance(1)
    p.client.ks.renegotiate("test", p.now)
    p.pump()
    p.server.ks.answer_auth(False, "password changed", p.now, key_id=1)
    p.pump()
    (fatal,) = _of(p.client.events, Fatal)
    assert isinstance(fatal, Fatal) and "AUTH_FAILED" in fatal.reason
    p.advance(6)
    assert p.server.ks.closed and p.server.ks.primary == 0


def test_an_unanswered_reauth_keeps_the_old_key_until_the_hand_window() -> None:
    p = _accepted(hand_window=5.0)
    p.advance(1)
    p.client.ks.renegotiate("test", p.now)
    p.pump()
    p.run_until_idle(8)
    assert p.server.ks.primary == 0 and p.server.ks.pending is None
    p.server.ks.answer_auth(True, "", p.now, key_id=1)  # too late: a stray answer changes nothing
    p.pump()
    assert p.server.ks.primary == 0


def test_a_second_reauth_can_be_refused_after_key_0_is_gone() -> None:
    p = _accepted()
    for key_id in (1, 2):
        p.advance(1)
        p.client.ks.renegotiate("test", p.now)
        p.pump()
        if key_id == 1:
            p.server.ks.answer_auth(True, "", p.now, key_id=1)
            p.pump()
            p.advance(4000)  # the transition window retires key 0
    assert 0 not in p.server.ks.sessions and p.server.ks.primary == 1
    p.server.ks.answer_auth(False, "", p.now, key_id=2)
    p.pump()
    (fatal,) = _of(p.client.events, Fatal)
    assert isinstance(fatal, Fatal) and "AUTH_FAILED" in fatal.reason


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


def test_a_renewed_auth_token_reaches_the_client() -> None:
    """auth-gen-token renewal: the server pushes `PUSH_REPLY,auth-token ...` while the tunnel
    is up; the client keeps the new token for renegotiations and reconnects."""
    p = Pair(server=server_config(verify_auth=True), password="open sesame")
    p.connect()
    p.server.ks.answer_auth(True, "", p.now, "SESS_ID_AT_first")
    p.pump()
    assert p.client.ks.settings is not None and p.client.ks.settings.auth_token == "SESS_ID_AT_first"
    p.advance(1)
    p.server.ks.push_auth_token("SESS_ID_AT_second", p.now)
    p.pump()
    (renewed,) = _of(p.client.events, AuthTokenRenewed)
    assert isinstance(renewed, AuthTokenRenewed) and renewed.token == "SESS_ID_AT_second"
    assert "SESS_ID_AT_second" not in repr(renewed)
    assert p.client.ks.settings.auth_token == "SESS_ID_AT_second"
    assert len(_of(p.client.events, TunnelUp)) == 1  # the tunnel is not set up again
