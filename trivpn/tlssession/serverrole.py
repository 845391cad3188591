"""The server half of the key schedule: negotiation at key exchange, the password check,
PUSH_REPLY on request (functions over a `keyschedule.KeySchedule`, split off to keep each module
readable; it shares the schedule's state and, like it, never does IO or reads a clock).

At key exchange of key 0 the server either asks the service (`AuthRequest`, when a verify
script must decide; `answer_auth` continues) or goes straight to `server_ready`: parse the
client's peer-info, negotiate cipher / key derivation / protocol flags against the policy
(`negotiation.server_agreement`), install key 0, report `ClientReady`, and push — at once
when the client's IV_PROTO asks for it, else on its PUSH_REQUEST (a repeat within
`PUSH_REPEAT_HOLD` seconds is ignored, as push.c does). A refused client gets AUTH_FAILED and
the session ends `SCHEDULED_EXIT` seconds later, so the message reaches it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from trivpn.errors import FatalError
from trivpn.messages import AuthRequest, ClientReady
from trivpn.tlssession.control import Fatal
from trivpn.tlssession.core import KeyExchangeComplete
from trivpn.tlssession.negotiation import NegotiationError, PeerInfo, server_agreement

if TYPE_CHECKING:
    from trivpn.tlssession.keyschedule import KeySchedule

__all__ = [
    "PUSH_REPEAT_HOLD",
    "SCHEDULED_EXIT",
    "answer_auth",
    "answer_reauth",
    "hold_renegotiation",
    "push_auth_token",
    "with_auth_token",
    "hold_for_auth",
    "on_push_request",
    "server_ready",
]

log = logging.getLogger("trivpn.tlssession")

#: A server ends a refused client this long after telling it (OpenVPN's schedule_exit).
SCHEDULED_EXIT = 5.0
#: A server ignores a repeated PUSH_REQUEST this soon after its reply (push.c).
PUSH_REPEAT_HOLD = 30.0


def hold_for_auth(ks: KeySchedule, ev: KeyExchangeComplete) -> None:
    """A verify script decides first: no keys, no PUSH_REPLY until `answer_auth`."""
    km = ks.sessions[0].peer_km
    ks._held = ev
    hs = ks.handshake
    ks._events.append(AuthRequest(
        km.username if km else "", hs.peer_subject if hs else "", km.password if km else "",
        ev.peer_info, hs.peer_chain if hs else (), common_name=hs.common_name if hs else "",
    ))


def hold_renegotiation(ks: KeySchedule, key_id: int, ev: KeyExchangeComplete) -> None:
    """A renegotiated key waits for the credentials to be checked again (`reauth`)."""
    km = ks.sessions[key_id].peer_km
    ks._reauth_held = key_id
    hs = ks.handshake
    ks._events.append(AuthRequest(
        km.username if km else "", hs.peer_subject if hs else "", km.password if km else "",
        ev.peer_info, hs.peer_chain if hs else (), key_id=key_id,
        common_name=hs.common_name if hs else "",
    ))


def answer_reauth(ks: KeySchedule, key_id: int, accept: bool, reason: str, now: float) -> None:
    """The answer for a renegotiated key: install it, or refuse the client (AUTH_FAILED on the
    current key, then the end). Stray or late answers are ignored."""
    if ks.closed or ks._reauth_held != key_id or ks.pending != key_id:
        return
    ks._reauth_held = None
    if accept:
        ks._install_renegotiated(key_id, now)
        return
    ks._drop_pending()
    log.warning("refusing the client at renegotiation: %s", reason or "authentication failed")
    primary = ks.sessions.get(ks.primary) if ks.primary is not None else None
    if primary is not None:
        primary.send_control_message(f"AUTH_FAILED,{reason}" if reason else "AUTH_FAILED")
    ks._end = (now + SCHEDULED_EXIT, Fatal(f"the client was refused: {reason or 'authentication failed'}"))


def answer_auth(ks: KeySchedule, accept: bool, reason: str, now: float, auth_token: str | None = None) -> None:
    """Server: the answer to AuthRequest; refused clients get AUTH_FAILED and an end.
    Stray answers (none asked, or already closed) are ignored."""
    ev, ks._held = ks._held, None
    if ev is None or ks.closed or ks.pending != 0:
        return
    if accept:
        ks._auth_token = auth_token
        server_ready(ks, ev, now)
    else:
        refuse(ks, reason, now)


def refuse(ks: KeySchedule, reason: str, now: float) -> None:
    log.warning("refusing the client: %s", reason or "authentication failed")
    ks.sessions[0].send_control_message(f"AUTH_FAILED,{reason}" if reason else "AUTH_FAILED")
    ks._end = (
        now + SCHEDULED_EXIT,
        Fatal(f"the client was refused: {reason or 'authentication failed'}"),
    )
    ks.pending = None  # only the scheduled end remains


def server_ready(ks: KeySchedule, ev: KeyExchangeComplete, now: float) -> None:
    session = ks.sessions[0]
    km = session.peer_km
    hs = ks.handshake
    subject = hs.peer_subject if hs else ""
    peer = PeerInfo.parse(ev.peer_info, username=km.username if km else "", peer_subject=subject,
                          common_name=hs.common_name if hs else "")
    ks.peer = peer
    source = ks.config.push
    try:
        base = source(peer) if callable(source) else source
        agreement = server_agreement(
            peer, ev.peer_options, ks.config.policy, base, ks.config.peer_id
        )
    except NegotiationError as exc:
        refuse(ks, str(exc), now)
        return
    except FatalError as exc:
        ks._close(Fatal(str(exc)))
        return
    ks._push = with_auth_token(list(agreement.options), ks._auth_token)
    ks._agreed(agreement, now)
    ks._events.append(
        ClientReady(
            peer,
            agreement.options,
            agreement.cipher,
            agreement.key_derivation,
            subject,
            hs.tls_version if hs else "",
            km.username if km else "",
            km.password if km else "",
        )
    )
    if agreement.request_push or ks._push_requested:
        send_push(ks, now)


def on_push_request(ks: KeySchedule, now: float) -> None:
    if ks._push is None:
        ks._push_requested = True  # answered once the client is ready
    elif ks._pushed_at is None or now - ks._pushed_at >= PUSH_REPEAT_HOLD:
        send_push(ks, now)


def send_push(ks: KeySchedule, now: float) -> None:
    assert ks._push is not None and ks.primary is not None
    ks.sessions[ks.primary].send_push_reply(ks._push)
    ks._pushed_at = now


def with_auth_token(options: list[str], token: str | None) -> list[str]:
    """`auth-token TOKEN` goes right after `peer-id` (else at the end of the base options'
    per-client part), where OpenVPN's prepare_push_reply puts it."""
    if token is None:
        return options
    at = next((i + 1 for i, o in enumerate(options) if o.startswith("peer-id ")), None)
    if at is None:
        at = next((i for i, o in enumerate(options) if o.startswith(("cipher ", "protocol-flags ",
                                                                     "key-derivation "))), len(options))
    return [*options[:at], f"auth-token {token}", *options[at:]]


def push_auth_token(ks: KeySchedule, token: str, now: float) -> None:
    """A renewed auth-token: alone in a PUSH_REPLY on the primary key (ignored before the
    client is ready or after the session ended)."""
    if ks.closed or ks.primary is None or ks._push is None:
        return
    ks._auth_token = token
    ks.sessions[ks.primary].send_push_reply([f"auth-token {token}"])
