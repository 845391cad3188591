"""The key schedule of one session (OpenVPN's tls_multi), sans-IO and role-symmetric.

Theory of operation
-------------------
Every data key comes from its own TLS session, one per key id (0 first, then 1..7 wrapping
to 1, never 0 again). At any time there are at most three:

* **primary** — the key the data channel sends with;
* **pending** — a key being negotiated (the first one, or a renegotiation);
* **lame duck** — the previous primary, kept for decryption until `transition_window`
  seconds after its successor was installed, then retired with a `RetireKey` event. A newer
  installation replaces an older lame duck outright (the data channel keeps two keys).

The first key starts with `receive_reset` (the muxer's ResetComplete). The client, always
the TLS client, starts the handshake; the server answers it. Keys are installed when both
ends know the data-channel parameters: the client on the complete PUSH_REPLY (or at key
exchange without `pull`: P2P NCP from the peer's peer-info, negotiation.py), the server
at key exchange, after negotiating the cipher (NCP), the key derivation and the protocol flags from the client's peer-info; it then pushes the
base options plus the per-client part (proactively when the client's IV_PROTO asks for it,
else on PUSH_REQUEST; a repeated PUSH_REQUEST within 30 s is ignored).

A renegotiation starts on either side: `renegotiate()` (every trigger lives here: reneg-sec
through the timer, reneg-bytes / reneg-pkts / packet ids near wrap through
`receive_usage`) opens the next key id and sends our SoftReset; the peer answers with its
own. A peer's SoftReset opens that key and is answered at once. Whoever sent the first
SoftReset, the client starts TLS once both resets were exchanged. If both ends start at
once with different ids, the client yields to the server's. Otherwise a SoftReset for
another key id while a key is pending is ignored until that key is done or given up, as in
OpenVPN: a peer cannot restart key exchanges (and the verify script) back to back. Both ends install the new key
when key method 2 completes (no new PUSH_REPLY); the cipher and flags of the first key stay.

A server with a verify script (`verify_auth`) holds key 0 after key method 2: it emits
`AuthRequest` and installs / pushes only on `answer_auth(True)`; a refusal sends AUTH_FAILED
and ends the session shortly after. The hand window keeps running meanwhile. With `reauth`
it holds every renegotiated key the same way (the client's password, or its auth-token,
is checked again, as OpenVPN does); a refusal ends the session too.

Failures: the first key must complete within `hand_window` (AUTH_PENDING extends the
wait) or the session ends with `Restart`. A client ends with `Restart` too on any TLS
failure of key 0 (bad certificate, alert, garbage) and an unusable PUSH_REPLY: the path can
cause them (docs/security.md); only AUTH_FAILED and HALT are `Fatal` for a client. A renegotiation that fails (TLS error, or not
done within `hand_window`) is dropped and the current key stays in use; the next attempt
takes the next key id, skipping the ids of the primary and lame-duck keys. Except on a
server whose check of the client's certificate fails at renegotiation (revoked since the
client came, a CRL that cannot be used, no certificate): every key is a full handshake that
verifies the certificate again, as in OpenVPN, and a refused one ends the session, like at
key 0 `SCHEDULED_EXIT` seconds later so that the TLS alert reaches the client; no further
renegotiation starts meanwhile.

Receive early, send late: the server has a renegotiated key at key exchange, one control
round trip before the client, so its InstallKey says `send_now=False` (receive only; the
data channel seals with it once the client's first packet with it arrives) and an
`ActivateKey` follows after min(hand_window, transition_window / 2) for a silent client (by
then the client has the key or gave up; OpenVPN waits for the ACK of its key-method-2). The
client installs with `send_now=True`: a real server already has the key then.

Interface (time only enters as `now`)::

    ks = KeySchedule(KeyScheduleConfig(role="client"|"server", policy=CipherPolicy(...), ...),
                     make_session=lambda key_id, auth_token: TLSSession(...))
    ks.begin(now)  (server: the session exists)  ks.receive_reset(ResetComplete, now)
    ks.receive_soft_reset(key_id, now)
    ks.receive_ciphertext(key_id, data, now)    ks.receive_usage(KeyUsage, now)
    ks.renegotiate(reason, now) -> bool         ks.send_exit(now) -> bool
    ks.items_to_send(now) -> list[SoftReset | DynamicWrapKey | Ciphertext]   (in order)
    ks.events() -> list[InstallKey | ActivateKey | RetireKey | TunnelUp | ClientReady
                        | AuthPending | AuthRequest | Restart | Fatal]
    ks.answer_auth(accept, reason, now[, token]) (server with verify_auth: after AuthRequest)
    ks.push_auth_token(token, now)              (server: auth-gen-token renewal)
    ks.get_timer() -> float | None              ks.handle_timer(now)

After `Restart` or `Fatal` the schedule is closed and ignores further input. Nothing from
the peer raises; misuse by the caller raises LocalProtocolError.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from trivpn.errors import (
    CertificateRejected,
    FatalError,
    LocalProtocolError,
    RemoteProtocolError,
    SessionRestart,
)
from trivpn.messages import (
    ActivateKey,
    AuthPending,
    AuthRequest,
    AuthTokenRenewed,
    Ciphertext,
    ClientReady,
    DynamicWrapKey,
    InstallKey,
    KeyUsage,
    ResetComplete,
    RetireKey,
    SoftReset,
    TunnelUp,
)
from trivpn.profile.push import PushedSettings
from trivpn.redact import redact_control, redact_option
from trivpn.tlssession import serverrole
from trivpn.tlssession.config import TRANSITION_WINDOW, KeyScheduleConfig, PushSource
from trivpn.tlssession.control import (
    Fatal,
    Info,
    InfoLogBudget,
    Restart,
    Unknown,
    client_verdict,
    server_verdict,
)
from trivpn.tlssession.core import (
    ControlMessage,
    HandshakeComplete,
    KeyExchangeComplete,
    PushReplyReceived,
    PushRequestReceived,
    TLSSession,
)
from trivpn.tlssession.negotiation import (
    Agreement,
    PeerInfo,
    client_agreement,
    dynamic_wrap_key,
    first_install_key,
    p2p_agreement,
)
from trivpn.tlssession.serverrole import SCHEDULED_EXIT

__all__ = ["TRANSITION_WINDOW", "ClientReady", "Event", "Fatal", "KeySchedule", "KeyScheduleConfig",
           "PushSource", "Restart", "next_key_id"]

log = logging.getLogger("trivpn.tlssession")

Event = (
    InstallKey | ActivateKey | RetireKey | TunnelUp | ClientReady | AuthPending | AuthRequest | Restart | Fatal
    | AuthTokenRenewed
)
Outgoing = SoftReset | DynamicWrapKey | Ciphertext


def next_key_id(key_id: int) -> int:
    """Key ids run 1..7 after the first key (0), wrapping to 1, never back to 0."""
    return 1 if key_id >= 7 else key_id + 1


class KeySchedule:
    """Primary / pending / lame-duck keys of one session, for either role (sans-IO)."""

    def __init__(
        self, config: KeyScheduleConfig, make_session: Callable[[int, str | None], TLSSession]
    ) -> None:
        self.config = config
        self.is_server = config.role == "server"
        self._make_session = make_session
        self.sessions: dict[int, TLSSession] = {}
        self.reset: ResetComplete | None = None
        self.primary: int | None = None
        self.pending: int | None = None
        self.lame_duck: int | None = None
        self._pending_deadline = 0.0
        #: `begin`: when key 0 must be done, counted from the session's start
        self._first_deadline: float | None = None
        self._pending_local = False  # we sent the first SoftReset of the pending key
        self._pending_answered = False  # both SoftResets were exchanged
        self._lame_until = 0.0
        self._activate: tuple[int, float] | None = None  # (receive-only key, ActivateKey due)
        self._reneg_at: float | None = None
        self._last_key_id = 0
        self._usage_key: int | None = None
        self._usage_base = (0, 0)
        self._out: list[Outgoing] = []
        self._events: list[Event] = []
        self.closed = False
        self._end: tuple[float, Restart | Fatal] | None = None
        self.handshake: HandshakeComplete | None = None
        #: client: the pushed settings; server: what we pushed, parsed
        self.settings: PushedSettings | None = None
        self.cipher = ""
        self.ekm = False
        self.cc_exit = False
        self.dynamic_tls_crypt = False
        self._template: InstallKey | None = None
        self.peer: PeerInfo | None = None  # server: the client's peer-info
        self._push: list[str] | None = None  # server: the options we push
        self._push_requested = False
        self._held: KeyExchangeComplete | None = None  # server: key 0 awaiting answer_auth
        self._auth_token: str | None = None  # server: auth-gen-token, pushed after peer-id
        self._reauth_held: int | None = None  # server: a renegotiated key awaiting answer_auth
        self._pushed_at: float | None = None
        self.renegotiations = 0
        self.dropped_control_messages = 0
        #: the peer's INFO messages: a few log lines per minute, then a count
        self.info_log = InfoLogBudget()

    # -- input --------------------------------------------------------------------------------

    def begin(self, now: float) -> None:
        """The session exists (server: a TCP connection was accepted, a cookie came back):
        key 0 must be done within `hand_window` from now, reset or not, as OpenVPN counts
        from the instance's creation. Without it a TCP connection that never sent a valid
        reset held its max-clients slot (and socket) for ever."""
        if self._first_deadline is None and self.reset is None and not self.closed:
            self._first_deadline = now + self.config.hand_window

    def receive_reset(self, reset: ResetComplete, now: float) -> None:
        """The hard reset is done (both session ids known): open key 0."""
        if self.closed or self.reset is not None:
            return
        self.reset = reset
        self._open_key(0, now, local=True)
        if self._first_deadline is not None:  # the window started with the session (`begin`)
            self._pending_deadline = self._first_deadline
        self._pending_answered = True
        self.sessions[0].start(now)

    def receive_soft_reset(self, key_id: int, now: float) -> None:
        """The peer's P_CONTROL_SOFT_RESET_V1 for `key_id` (a start or an answer)."""
        if self.closed or self._end is not None or not 0 < key_id <= 7:
            return  # closed, or a refused client that only waits for its end
        if key_id == self.pending:
            if self._pending_local and not self._pending_answered:
                self._pending_answered = True  # the peer answered ours
                if not self.is_server:
                    self.sessions[key_id].start(now)
            return
        if key_id in (self.primary, self.lame_duck):
            return  # a repeated reset of a key we already have
        if self.primary is None:
            log.debug("ignoring a soft reset before the first key is up")
            return
        if self.pending is not None:
            if not self.is_server and self._pending_local and not self._pending_answered:
                # both ends started at once with different ids: the client yields
                log.info("the server renegotiates too; key id %d replaces ours (%d)", key_id, self.pending)
                self._drop_pending()
            else:
                # as OpenVPN (a soft reset counts only once the newest key has generated its
                # keys): no back-to-back key exchanges (each may run the verify script);
                # debug only, as the peer chooses how often this happens
                log.debug("ignoring a soft reset for key id %d: key id %d is still being negotiated",
                          key_id, self.pending)
                return
        expected = next_key_id(self._last_key_id)
        peer = "client" if self.is_server else "server"
        if key_id != expected:
            log.warning("%s renegotiates with key id %d (expected %d)", peer, key_id, expected)
        log.info("%s started a renegotiation: key id %d", peer, key_id)
        self._open_key(key_id, now, local=False)

    def receive_ciphertext(self, key_id: int, data: bytes, now: float) -> None:
        """TLS bytes of `key_id` from the control channel."""
        session = self.sessions.get(key_id)
        if self.closed or session is None:
            return
        if key_id == self.pending and not self._pending_answered:
            return  # no TLS before both soft resets: nothing valid can arrive yet
        try:
            session.receive_ciphertext(data, now)
        except (RemoteProtocolError, FatalError) as exc:
            self._key_failed(key_id, exc, now)
            return
        self._process_events(key_id, now)

    def receive_usage(self, usage: KeyUsage, now: float) -> None:
        """What the data channel's primary key carried: reneg-bytes, reneg-pkts, wrap."""
        if self.closed or usage.key_id is None:
            return
        if usage.key_id != self._usage_key:  # a new key: measure from here
            self._usage_key, self._usage_base = usage.key_id, (usage.bytes, usage.packets)
            return
        limit_bytes, limit_pkts = self.config.reneg_bytes, self.config.reneg_pkts
        base_bytes, base_pkts = self._usage_base
        if limit_bytes and usage.bytes - base_bytes >= limit_bytes:
            reason = f"reneg-bytes {limit_bytes}"
        elif limit_pkts and usage.packets - base_pkts >= limit_pkts:
            reason = f"reneg-pkts {limit_pkts}"
        elif usage.near_wrap:
            reason = "packet ids near wrap"
        else:
            return
        self._usage_base = (usage.bytes, usage.packets)
        self.renegotiate(reason, now)

    # -- commands -----------------------------------------------------------------------------

    def renegotiate(self, reason: str, now: float) -> bool:
        """Start a renegotiation (our SoftReset first); False if one is running or no key yet."""
        if self.closed or self._end is not None or self.primary is None or self.pending is not None:
            return False
        key_id = next_key_id(self._last_key_id)
        while key_id in (self.primary, self.lame_duck):  # after failed attempts wrapped around
            key_id = next_key_id(key_id)
        log.info("renegotiating data keys (%s): key id %d", reason, key_id)
        self._open_key(key_id, now, local=True)
        return True

    def send_exit(self, now: float, *, advance: bool = False, message: str | None = None) -> bool:
        """Tell the peer we leave: client EXIT (with cc-exit), server RESTART[,[N]].

        False if nothing was sent (no key yet, or a client without cc-exit: the caller
        then sends OCC EXIT on the data channel)."""
        if self.closed or self.primary is None or not (self.cc_exit or self.is_server):
            return False
        text = (message or ("RESTART,[N]" if advance else "RESTART")) if self.is_server else "EXIT"
        self.sessions[self.primary].send_control_message(text)
        return True

    # -- output -------------------------------------------------------------------------------

    def items_to_send(self, now: float) -> list[Outgoing]:
        """Soft resets and wrap keys first, in order, then each key's TLS bytes."""
        out, self._out = self._out, []
        for key_id, session in self.sessions.items():
            data = session.ciphertext_to_send(now)
            if data:
                out.append(Ciphertext(key_id, data))
        return out

    def events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def get_timer(self) -> float | None:
        if self.closed:
            return None
        timers = [t for s in self.sessions.values() if (t := s.get_timer()) is not None]
        if self.reset is None and self._first_deadline is not None:
            timers.append(self._first_deadline)
        if self.pending is not None:
            timers.append(self._pending_deadline)
        elif self._reneg_at is not None and self.primary is not None:
            timers.append(self._reneg_at)
        if self.lame_duck is not None:
            timers.append(self._lame_until)
        if self._activate is not None:
            timers.append(self._activate[1])
        if self._end is not None:
            timers.append(self._end[0])
        if (info := self.info_log.deadline()) is not None:
            timers.append(info)
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        for session in self.sessions.values():
            session.handle_timer(now)
        self._log_suppressed_info(now)
        if self._end is not None and now >= self._end[0]:
            self._close(self._end[1])
            return
        if self.reset is None and self._first_deadline is not None and now >= self._first_deadline:
            self._close(Restart(f"no valid reset from the peer within {self.config.hand_window:g} seconds"))
            return
        if self.pending is not None and now >= self._pending_deadline:
            if self.pending == 0:
                self._close(
                    Restart(f"TLS key negotiation failed to occur within {self.config.hand_window:g} seconds")
                )
                return
            log.warning(
                "renegotiation of key id %d did not finish within %g s; keeping key id %s",
                self.pending, self.config.hand_window, self.primary,
            )
            self._drop_pending()
            self._schedule_reneg(now)
        elif self.pending is None and self._reneg_at is not None and now >= self._reneg_at:
            self._reneg_at = None
            self.renegotiate(f"reneg-sec {self.config.reneg_sec:g}", now)
        if self._activate is not None and now >= self._activate[1]:
            self._events.append(ActivateKey(self._activate[0]))  # before any RetireKey
            self._activate = None
        if self.lame_duck is not None and now >= self._lame_until:
            self._retire_lame_duck()

    # -- keys ---------------------------------------------------------------------------------

    def _open_key(self, key_id: int, now: float, *, local: bool) -> None:
        """A brand-new TLS session for `key_id` (never TLS-level renegotiation)."""
        keep = {self.primary, self.lame_duck}
        for stale in [k for k in self.sessions if k not in keep]:
            del self.sessions[stale]
        token = None if self.is_server or self.settings is None else self.settings.auth_token
        session = self._make_session(key_id, token)
        self.sessions[key_id] = session
        self.pending = key_id
        self._pending_deadline = now + self.config.hand_window
        self._pending_local = local
        self._pending_answered = not local
        self._last_key_id = key_id
        if key_id == 0:
            return
        self._out.append(SoftReset(key_id))
        if not local and not self.is_server:
            session.start(now)  # both resets exchanged: the TLS client begins

    def _drop_pending(self) -> None:
        if self.pending is not None:
            self.sessions.pop(self.pending, None)
            self.pending = None

    def _retire_lame_duck(self) -> None:
        if self.lame_duck is not None:
            self._events.append(RetireKey(self.lame_duck))
            self.sessions.pop(self.lame_duck, None)
            self.lame_duck = None

    def _schedule_reneg(self, now: float) -> None:
        sec = self.config.reneg_sec
        self._reneg_at = now + sec if sec > 0 else None

    def _key2(self, key_id: int, ekm: bool) -> bytes:
        reset = self.reset
        if reset is None:
            raise LocalProtocolError("no session ids: receive_reset was never called")
        ours, theirs = reset.local_session_id, reset.remote_session_id
        client_sid, server_sid = (theirs, ours) if self.is_server else (ours, theirs)
        return self.sessions[key_id].data_key2(ekm=ekm, client_sid=client_sid, server_sid=server_sid)

    def _key_failed(self, key_id: int, exc: Exception, now: float) -> None:
        if self._end is not None:
            return  # already refusing this client; the scheduled end stands
        if self.is_server and key_id == 0 and isinstance(exc, FatalError):
            # a refused client certificate (revoked, unknown CA, ...): OpenSSL has queued the
            # TLS alert; keep the session a moment so the control channel delivers it and the
            # client learns why at once instead of waiting out its hand-window
            log.warning("refusing the client: %s", exc)
            self._end = (now + SCHEDULED_EXIT, Fatal(str(exc)))
            self.pending = None
            return
        if self.is_server and key_id == self.pending and isinstance(exc, CertificateRejected):
            # the client's certificate no longer passes (revoked since it came, the CRL
            # unusable now): it goes, as in OpenVPN; its alert is delivered first (the pending
            # session stays to send it) and the current key carries on until the end
            log.warning("refusing the client at renegotiation of key id %d: %s", key_id, exc)
            self._end = (now + SCHEDULED_EXIT, Fatal(f"refused at renegotiation: {exc}", CertificateRejected))
            self.pending, self._reneg_at = None, None
            return
        if key_id == self.pending and key_id != 0:
            # a failed renegotiation: the current key keeps the tunnel up
            log.warning("renegotiation of key id %d failed: %s", key_id, exc)
            self._drop_pending()
            self._schedule_reneg(now)
        elif isinstance(exc, FatalError) and self.is_server:
            self._close(Fatal(str(exc), type(exc)))
        else:
            # client: anyone on the path can break the handshake; a restart, never an exit
            self._close(Restart(f"TLS failed: {exc}", certificate=isinstance(exc, CertificateRejected)))

    def _install_renegotiated(self, key_id: int, now: float) -> None:
        assert self._template is not None
        key2 = self._key2(key_id, self.ekm)
        send_now = not self.is_server  # see "receive early, send late" above
        self._events.append(replace(self._template, key_id=key_id, key2=key2, send_now=send_now))
        # an older receive-only key is activated by this install (data channel: KeyTable)
        cfg = self.config
        self._activate = None if send_now else (key_id, now + min(cfg.hand_window, cfg.transition_window / 2))
        if self.lame_duck is not None:  # replaced by the installation, not retired by time
            self.sessions.pop(self.lame_duck, None)
        self.lame_duck, self._lame_until = self.primary, now + self.config.transition_window
        self.primary, self.pending = key_id, None
        self.renegotiations += 1
        self._schedule_reneg(now)
        log.info("new data keys in use: key id %d (renegotiation %d)", key_id, self.renegotiations)

    # -- events of one TLS session ------------------------------------------------------------

    def _process_events(self, key_id: int, now: float) -> None:
        session = self.sessions[key_id]
        for ev in session.events():
            if self.closed:
                return
            if isinstance(ev, HandshakeComplete):
                self.handshake = ev if key_id == 0 or self.handshake is None else self.handshake
                peer = "client" if self.is_server else "server"
                log.info("TLS ok: %s, %s, %s %s", ev.tls_version, ev.cipher, peer, ev.peer_subject)
            elif isinstance(ev, KeyExchangeComplete):
                log.debug("key exchange complete; peer options: %s", ev.peer_options)
                if key_id != self.pending:
                    continue
                if key_id != 0 and self.is_server and self.config.reauth:
                    serverrole.hold_renegotiation(self, key_id, ev)
                elif key_id != 0:
                    self._install_renegotiated(key_id, now)
                elif self.is_server and self.config.verify_auth:
                    serverrole.hold_for_auth(self, ev)
                elif self.is_server:
                    serverrole.server_ready(self, ev, now)
                elif not self.config.pull:  # P2P NCP from the peer's peer-info
                    self._client_ready([], now, ev.peer_info)
            elif isinstance(ev, PushReplyReceived):
                if not self.is_server:
                    self._on_push_reply(key_id, ev.options, now)
            elif isinstance(ev, PushRequestReceived):
                self._on_push_request(now)
            elif isinstance(ev, ControlMessage):
                self._on_control(ev.text, now)

    def _on_control(self, text: str, now: float) -> None:
        if self.is_server:
            verdict = server_verdict(text)
        else:
            verdict = client_verdict(text, pushed=self.settings is not None)
        if isinstance(verdict, Restart | Fatal):
            self._close(verdict)
        elif isinstance(verdict, Info | AuthPending):
            if isinstance(verdict, Info):
                self._log_suppressed_info(now)
                if not self.info_log.allow(now):
                    return
            log.info("%s says: %s", "client" if self.is_server else "server", redact_control(text))
            if isinstance(verdict, AuthPending):
                self._events.append(verdict)
                if self.pending == 0:  # the server needs more time for the first key
                    self._pending_deadline = max(self._pending_deadline, now + verdict.timeout)
        elif isinstance(verdict, Unknown):
            self.dropped_control_messages += 1
            log.debug("ignored control message %r", redact_control(text)[:80])

    def _log_suppressed_info(self, now: float) -> None:
        if n := self.info_log.due(now):
            log.info("%s sent %d more INFO messages that were not logged (at most %d lines per %g s)",
                     "client" if self.is_server else "server", n, self.info_log.lines, self.info_log.window)

    def _close(self, event: Restart | Fatal) -> None:
        self._events.append(event)
        self.closed = True

    # -- client: the PUSH_REPLY makes the first key -------------------------------------------

    def _on_push_reply(self, key_id: int, options: list[str], now: float) -> None:
        if self.settings is not None:
            # a later PUSH_REPLY: OpenVPN's servers renew the auth-token this way
            tokens = [o.split(None, 1)[1].strip() for o in options
                      if o.startswith("auth-token ") and len(o.split(None, 1)) == 2]
            if tokens and tokens[-1]:
                self.settings.auth_token = tokens[-1]
                self._events.append(AuthTokenRenewed(tokens[-1]))
                log.info("the server renewed the auth-token")
            else:
                log.debug("ignoring a repeated PUSH_REPLY")
            return
        if key_id != 0 or self.pending != 0:
            log.debug("ignoring a repeated PUSH_REPLY")
            return
        log.info("pushed settings: %s", ",".join(redact_option(o) for o in options))
        self._client_ready(options, now)

    def _client_ready(self, options: list[str], now: float, p2p_info: str | None = None) -> None:
        policy = self.config.policy
        try:
            agreement = client_agreement(options, policy) if p2p_info is None else p2p_agreement(
                PeerInfo.parse(p2p_info), policy, tls_server=False, export=self.sessions[0].engine.export_keying_material
            )
        except (FatalError, SessionRestart) as exc:  # SessionRestart: a pull-filter reject
            # OpenVPN's process-push-msg-failed: a soft restart either way
            self._close(Restart(str(exc)))
            return
        for warning in agreement.settings.warnings:
            log.warning("%s", warning)
        self._agreed(agreement, now)
        hs = self.handshake
        self._events.append(
            TunnelUp(
                agreement.settings,
                agreement.cipher,
                agreement.key_derivation,
                hs.peer_subject if hs else "?",
                hs.tls_version if hs else "?",
                peer_chain=hs.peer_chain if hs else (),
            )
        )

    def _agreed(self, agreement: Agreement, now: float) -> None:
        """Key 0 is done: remember what was settled and install it."""
        self.settings, self.cipher = agreement.settings, agreement.cipher
        self.ekm, self.cc_exit = agreement.ekm, agreement.cc_exit
        if agreement.dyn_tls_crypt:
            self._out.append(DynamicWrapKey(dynamic_wrap_key(self.sessions[0].engine, self.config.wrap_key)))
            self.dynamic_tls_crypt = True
        self._template = first_install_key(
            agreement, self._key2(0, agreement.ekm), self.config.keepalive, self.config.policy,
            server=self.is_server,
        )
        self.primary, self.pending = 0, None
        self._schedule_reneg(now)
        self._events.append(self._template)

    # -- server role (trivpn.tlssession.serverrole) ---------------------------------------

    def answer_auth(
        self, accept: bool, reason: str, now: float, auth_token: str | None = None, key_id: int = 0
    ) -> None:
        """Server: the answer to AuthRequest (of `key_id`); refused clients get AUTH_FAILED and
        an end. `auth_token` (auth-gen-token) goes into the PUSH_REPLY after `peer-id`."""
        if key_id:
            serverrole.answer_reauth(self, key_id, accept, reason, now)
        else:
            serverrole.answer_auth(self, accept, reason, now, auth_token)

    def push_auth_token(self, token: str, now: float) -> None:
        """Server: send a renewed auth-token (`PUSH_REPLY,auth-token ...`) once ready."""
        serverrole.push_auth_token(self, token, now)

    def _on_push_request(self, now: float) -> None:
        serverrole.on_push_request(self, now)
