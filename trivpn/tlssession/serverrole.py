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
    "hold_for_auth",
    "renegotiated",
    "on_push_request",
    "server_ready",
]

log = logging.getLogger("trivpn.tlssession")

#: A server ends a refused client this long after telling it (OpenVPN's schedule_exit).
SCHEDULED_EXIT = 5.0
#: A server ignores a repeated PUSH_REQUEST this soon after its reply (push.c).
PUSH_REPEAT_HOLD = 30.0


def hold_for_auth(ks: KeySchedule, ev: KeyExchangeComplete, key_id: int = 0) -> None:
    """A verify script (or the management interface) decides first: no keys, and for key 0
    no PUSH_REPLY, until `answer_auth`. For a renegotiated key (OpenVPN re-authenticates:
    management REAUTH) the current key carries the traffic meanwhile; the pending key's
    hand-window bounds the wait."""
    km = ks.sessions[key_id].peer_km
    ks._held = (key_id, ev)
    subject = ks.handshake.peer_subject if ks.handshake else ""
    ks._events.append(
        AuthRequest(km.username if km else "", subject, km.password if km else "", ev.peer_info, key_id)
    )


def renegotiated(ks: KeySchedule, key_id: int, ev: KeyExchangeComplete, now: float) -> None:
    """Key method 2 of a renegotiated key: install it, or hold it for the password check."""
    if ks.is_server and ks.config.verify_auth:
        hold_for_auth(ks, ev, key_id)
    else:
        ks._install_renegotiated(key_id, now)


def answer_auth(ks: KeySchedule, accept: bool, reason: str, now: float) -> None:
    """Server: the answer to AuthRequest; refused clients get AUTH_FAILED and an end.
    Stray answers (none asked, or already closed) are ignored."""
    held, ks._held = ks._held, None
    if held is None or ks.closed or ks.pending != held[0]:
        return
    key_id, ev = held
    if not accept:
        refuse(ks, reason, now)
    elif key_id:
        ks._install_renegotiated(key_id, now)
    else:
        server_ready(ks, ev, now)


def refuse(ks: KeySchedule, reason: str, now: float) -> None:
    log.warning("refusing the client: %s", reason or "authentication failed")
    # on the current key (a refused renegotiation: key 0 may be long gone)
    session = ks.sessions[ks.primary if ks.primary is not None else 0]
    session.send_control_message(f"AUTH_FAILED,{reason}" if reason else "AUTH_FAILED")
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
    peer = PeerInfo.parse(ev.peer_info, username=km.username if km else "", peer_subject=subject)
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
    ks._push = list(agreement.options)
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
