"""Sans-IO core of one OpenVPN TLS session (one key_id): TLS, key method 2, control strings.

Theory of operation
-------------------
The core sits between the reliable control channel (below, which moves opaque ciphertext)
and the session logic (above, which acts on events). It owns one TLSEngine and never does
I/O or reads a clock: ciphertext goes in with `receive_ciphertext(data, now)`, comes out of
`ciphertext_to_send(now)`, and the only timer (the PUSH_REQUEST retry) is exposed through
`get_timer()` / `handle_timer(now)`.

Plaintext is a sequence of TLS records, and OpenVPN gives records meaning:

1. The first record in each direction is the key-method-2 message (keymethod.py). The client
   writes its own in `start()`; the engine holds it back until the handshake completes, so it
   is the first application record on the wire. The server waits for the client's, then
   answers with its own (no pre_master, empty username/password/peer-info). Once both are
   exchanged the core emits KeyExchangeComplete and `data_key2()` can derive the key block.
2. Every later record holds one or more NUL-terminated ASCII control strings. A string with
   a byte outside printable ASCII is dropped and counted (OpenVPN does the same), never fatal.
   Anything we send ourselves is one string per record; strings sent before our
   key-method-2 message has been written are held back so the order stays right.
3. Client with `pull`: right after KeyExchangeComplete it sends PUSH_REQUEST and repeats it
   every `push_request_interval` seconds until a complete PUSH_REPLY has arrived. A reply
   split with `push-continuation 2` is accumulated; the part carrying `push-continuation 1`
   (or no continuation option) completes it. Each part received pushes the retry back by one
   interval so a slow multi-part reply is not requested again halfway through.
4. Everything else (AUTH_FAILED, RESTART, HALT, EXIT, INFO, AUTH_PENDING, ...) is surfaced as
   ControlMessage; deciding what it means is the session layer's job.

Server role: it answers key method 2 (KeyExchangeComplete carries the client's OCC options and
peer-info), reports PUSH_REQUEST as PushRequestReceived and sends the reply the key schedule
chose with `send_push_reply`, split like OpenVPN's into messages of at most
PUSH_BUNDLE_LIMIT characters joined by `push-continuation 2` ... `push-continuation 1`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import field

from trivpn.errors import LocalProtocolError, RemoteProtocolError
from trivpn.profile.push import PushReplyAssembler
from trivpn.records import dataclass
from trivpn.tlssession.keymethod import (
    PRE_MASTER_LEN,
    RANDOM_LEN,
    TLS_CHANNEL_BUF_SIZE,
    KeyMethod2,
    build_key_method_2,
    parse_key_method_2,
)
from trivpn.tlssession.keys import key2_from_ekm, key2_from_prf
from trivpn.tlssession.tls import TLSConfig, TLSEngine

#: OpenVPN's retry interval for PUSH_REQUEST (push.c).
PUSH_REQUEST_INTERVAL = 5.0
PUSH_REQUEST = "PUSH_REQUEST"
PUSH_REPLY = "PUSH_REPLY"
#: OpenVPN closes a PUSH_REPLY message before it grows past PUSH_BUNDLE_SIZE (1024) minus
#: the 84 bytes it reserves (push.c); the rest follows in continuation messages.
PUSH_BUNDLE_LIMIT = 1024 - 84


def push_reply_messages(options: Sequence[str], limit: int = PUSH_BUNDLE_LIMIT) -> list[str]:
    """The PUSH_REPLY message(s) carrying `options` (LocalProtocolError for a bad option)."""
    for opt in options:
        if not opt or "," in opt or not _is_printable(opt.encode("ascii", "replace")) or not opt.isascii():
            raise LocalProtocolError(f"cannot push {opt[:40]!r}: options are printable ASCII without commas")
        if len(PUSH_REPLY) + 1 + len(opt) > limit:
            raise LocalProtocolError(f"pushed option of {len(opt)} characters is too long")
    messages: list[str] = []
    current = PUSH_REPLY
    for opt in options:
        if current != PUSH_REPLY and len(current) + 1 + len(opt) > limit:
            messages.append(current + ",push-continuation 2")
            current = PUSH_REPLY
        current += "," + opt
    if messages:
        return [*messages, current + ",push-continuation 1"]
    return [current]


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    """The TLS handshake finished and the peer certificate passed every check."""

    peer_subject: str
    tls_version: str
    cipher: str
    #: the verified peer certificate chain as DER, leaf first (empty without a certificate)
    peer_chain: tuple[bytes, ...] = field(default=(), compare=False, repr=False)
    #: the certificate's own CN, printable (`tlsload.peer_common_name`); "" without one
    common_name: str = ""


@dataclass(frozen=True, slots=True)
class KeyExchangeComplete:
    """Both key-method-2 messages were exchanged: data keys can now be derived."""

    peer_options: str
    peer_info: str


@dataclass(frozen=True, slots=True)
class PushReplyReceived:
    """A complete PUSH_REPLY (continuations merged, push-continuation removed); client side."""

    options: list[str]


@dataclass(frozen=True, slots=True)
class ControlMessage:
    """Any other control string: AUTH_FAILED..., RESTART..., HALT..., EXIT, INFO..., ..."""

    text: str


@dataclass(frozen=True, slots=True)
class PushRequestReceived:
    """The client asked for its options; server side."""


#: What `TLSSession.events()` can return.
TLSEvent = (
    HandshakeComplete | KeyExchangeComplete | PushReplyReceived | ControlMessage | PushRequestReceived
)


def _is_printable(raw: bytes) -> bool:
    """OpenVPN's CC_PRINT test for control strings: ASCII 0x20..0x7e only."""
    return all(0x20 <= b < 0x7F for b in raw)


class TLSSession:
    """One key_id's TLS session with key method 2 and control messages (sans-IO)."""

    def __init__(
        self,
        config: TLSConfig,
        *,
        options_string: str,
        peer_info: str = "",
        username: str = "",
        password: str = "",
        pull: bool = True,
        push_request_interval: float = PUSH_REQUEST_INTERVAL,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if push_request_interval <= 0:
            raise LocalProtocolError("push_request_interval must be positive")
        self.engine = TLSEngine(config)
        self.is_server = config.is_server
        self.local_km: KeyMethod2 | None = None
        self.peer_km: KeyMethod2 | None = None
        #: Control strings dropped for non-printable bytes.
        self.dropped_control_messages = 0
        self._options = options_string
        self._peer_info = peer_info
        self._username = username
        self._password = password
        self._pull = pull and not config.is_server
        self._interval = push_request_interval
        self._random = random_bytes
        self._started = False
        self._events: list[TLSEvent] = []
        self._held: list[bytes] = []  # control records written before our key-method-2
        self._handshake_reported = False
        self._push_assembler = PushReplyAssembler()
        self._push_complete = False
        self._push_timer: float | None = None

    # -- driving ------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Client: begin the handshake and queue our key-method-2. Server: just get ready."""
        if self._started:
            raise LocalProtocolError("TLSSession.start called twice")
        self._started = True
        if not self.is_server:
            km = KeyMethod2(
                pre_master=self._random_exact(PRE_MASTER_LEN),
                random1=self._random_exact(RANDOM_LEN),
                random2=self._random_exact(RANDOM_LEN),
                options=self._options,
                username=self._username,
                password=self._password,
                peer_info=self._peer_info,
            )
            self._send_key_method(km)
        self.engine.start()

    def _random_exact(self, n: int) -> bytes:
        data = self._random(n)
        if len(data) != n:
            raise LocalProtocolError(f"random_bytes({n}) returned {len(data)} bytes")
        return data

    def _send_key_method(self, km: KeyMethod2) -> None:
        self.engine.write(build_key_method_2(km))
        self.local_km = km
        held, self._held = self._held, []
        for record in held:
            self.engine.write(record)

    def receive_ciphertext(self, data: bytes, now: float) -> None:
        """Feed TLS bytes from the control channel; events come out of `events()`.

        FatalError (certificate rejected) and RemoteProtocolError (broken TLS or a malformed
        key-method-2 message) propagate: either way this key_id's TLS session is dead.
        """
        if not self._started:
            if not self.is_server:
                raise LocalProtocolError("start() the client session before feeding it")
            self.start(now)
        self.engine.receive_ciphertext(data)
        if self.engine.handshake_done and not self._handshake_reported:
            self._handshake_reported = True
            self._events.append(
                HandshakeComplete(
                    self.engine.peer_subject or "",
                    self.engine.tls_version or "",
                    self.engine.cipher_name or "",
                    self.engine.peer_chain,
                    self.engine.peer_common_name,
                )
            )
        for record in self.engine.read_records():
            if self.peer_km is None:
                self._on_key_method(record, now)
            else:
                self._on_control_record(record, now)

    def _on_key_method(self, record: bytes, now: float) -> None:
        km = parse_key_method_2(record, from_client=self.is_server)
        self.peer_km = km
        if self.is_server:
            self._send_key_method(
                KeyMethod2(
                    pre_master=None,
                    random1=self._random_exact(RANDOM_LEN),
                    random2=self._random_exact(RANDOM_LEN),
                    options=self._options,
                    username="",
                    password="",
                    peer_info="",
                )
            )
        self._events.append(KeyExchangeComplete(km.options, km.peer_info))
        if self._pull and not self._push_complete:
            self._send_push_request(now)

    def _on_control_record(self, record: bytes, now: float) -> None:
        for raw in record.split(b"\x00"):
            if not raw:
                continue
            if not _is_printable(raw):
                self.dropped_control_messages += 1
                continue
            self._on_control_string(raw.decode("ascii"), now)

    def _on_control_string(self, text: str, now: float) -> None:
        if self.is_server and text == PUSH_REQUEST:
            self._events.append(PushRequestReceived())
        elif not self.is_server and (text == PUSH_REPLY or text.startswith(PUSH_REPLY + ",")):
            self._on_push_reply(text, now)
        else:
            self._events.append(ControlMessage(text))

    def _on_push_reply(self, text: str, now: float) -> None:
        try:
            options = self._push_assembler.feed(text)
        except RemoteProtocolError:
            self.dropped_control_messages += 1
            return
        if options is None:  # a continued reply: more parts follow
            if self._push_timer is not None:
                self._push_timer = now + self._interval
            return
        self._push_complete = True
        self._push_timer = None
        self._events.append(PushReplyReceived(options))

    def _send_push_request(self, now: float) -> None:
        self._write_control(PUSH_REQUEST)
        self._push_timer = now + self._interval

    def ciphertext_to_send(self, now: float) -> bytes:
        """All TLS bytes waiting for the control channel (b"" when none)."""
        return self.engine.ciphertext_to_send()

    def send_push_reply(self, options: Sequence[str]) -> None:
        """Server: send `options` as one or more PUSH_REPLY messages (continued if long)."""
        if not self.is_server:
            raise LocalProtocolError("only the server sends PUSH_REPLY")
        for text in push_reply_messages(options):
            self._write_control(text)

    def send_control_message(self, text: str) -> None:
        """Send one control string (printable ASCII) as its own NUL-terminated record."""
        self._write_control(text)

    def _write_control(self, text: str) -> None:
        raw = text.encode("ascii", "replace")
        if not raw or not _is_printable(raw) or not text.isascii():
            raise LocalProtocolError("control messages must be non-empty printable ASCII")
        record = raw + b"\x00"
        if len(record) > TLS_CHANNEL_BUF_SIZE:
            raise LocalProtocolError(
                f"control message of {len(record)} bytes exceeds {TLS_CHANNEL_BUF_SIZE}"
            )
        if self.local_km is None:
            self._held.append(record)
        else:
            self.engine.write(record)

    def events(self) -> list[TLSEvent]:
        """Drain the events produced so far."""
        events, self._events = self._events, []
        return events

    # -- timer --------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When the next PUSH_REQUEST retry is due, or None."""
        return self._push_timer

    def handle_timer(self, now: float) -> None:
        """Resend PUSH_REQUEST if its retry time has come and no full reply arrived."""
        if self._push_timer is None or now < self._push_timer:
            return
        if self._push_complete or self.engine.failed:
            self._push_timer = None
            return
        self._send_push_request(now)

    # -- keys ---------------------------------------------------------------------------------

    def data_key2(self, *, ekm: bool, client_sid: bytes, server_sid: bytes) -> bytes:
        """The 256-byte key block (TLS-EKM or TLS1-PRF), after KeyExchangeComplete."""
        if self.local_km is None or self.peer_km is None:
            raise LocalProtocolError("data keys need both key-method-2 messages first")
        if ekm:
            return key2_from_ekm(self.engine)
        client, server = (
            (self.peer_km, self.local_km) if self.is_server else (self.local_km, self.peer_km)
        )
        return key2_from_prf(client, server, client_sid, server_sid)
