"""The server_name of a TLS ClientHello, read without terminating TLS (pure, bounded).

Theory of operation
-------------------
The relay's `--https-addr` listener passes TLS through: it never holds a key. It reads
the client's first flight only far enough to find the SNI extension (RFC 6066), routes the
connection by that name, and forwards every byte it read, unchanged, as the start of the
tunnel stream; the TLS session is between the public client and the service behind
`expose`.

`client_hello(buf)` reassembles the first handshake message from TLS records (a
ClientHello may span several; each record at most 2^14 bytes) and `server_name(body)`
walks the ClientHello's fields down to the host_name entry. Every length is checked
against what is left before it is used, so any input ends in a result, a byte count
(need that many) or `SniError`, never another exception, and the work is linear in the input,
which may be at most `max_hello` bytes in at most `MAX_RECORDS` records; a reader
parses again only once the record it waits for is complete. `SniReader` adds the deadline and turns the
outcome into a routing decision: a `Route`, or a `Reject` carrying the TLS alert to send
(unrecognized_name for a name no tunnel serves, decode_error for a malformed hello).
"""

from __future__ import annotations

from typing import TypeVar

from trivpn.reverse.http.hostrouter import HEAD_TIMEOUT, Reject, Route, name_for_host

_D = TypeVar("_D", Route, Reject)

MAX_HELLO = 16 * 1024
#: Records a ClientHello may span (real ones use one or two); bounds the re-parsing.
MAX_RECORDS = 16
_RECORD_HANDSHAKE = 22
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_HOST_NAME = 0
_MAX_RECORD = 1 << 14
_HOST_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")

ALERT_DECODE_ERROR = 50
ALERT_UNRECOGNIZED_NAME = 112


class SniError(Exception):
    """Not a TLS ClientHello, or a malformed one."""


def alert(description: int) -> bytes:
    """A fatal TLS alert record (TLS 1.2 record version, as TLS 1.3 also uses)."""
    return bytes([21, 3, 3, 0, 2, 2, description])


def client_hello(buf: bytes | bytearray, max_hello: int = MAX_HELLO) -> bytes | int:
    """The ClientHello body from the first records in `buf`, or how many bytes `buf` must
    hold before it is worth calling again (the end of the next record or header)."""
    msg = bytearray()
    pos = 0
    for _ in range(MAX_RECORDS):
        if len(buf) - pos < 5:
            return pos + 5
        ctype, major, minor = buf[pos], buf[pos + 1], buf[pos + 2]
        length = int.from_bytes(buf[pos + 3 : pos + 5], "big")
        if ctype != _RECORD_HANDSHAKE:
            raise SniError("not a TLS handshake record")
        if major != 3 or minor > 4:
            raise SniError(f"TLS record version {major}.{minor}")
        if not 0 < length <= _MAX_RECORD:
            raise SniError(f"TLS record of {length} bytes")
        if len(msg) + length > max_hello + 4:
            raise SniError("ClientHello too large")
        if len(buf) - pos - 5 < length:
            return pos + 5 + length
        msg += buf[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(msg) >= 4:
            if msg[0] != _CLIENT_HELLO:
                raise SniError("the first handshake message is not a ClientHello")
            size = int.from_bytes(msg[1:4], "big")
            if size > max_hello:
                raise SniError(f"ClientHello of {size} bytes")
            if len(msg) >= 4 + size:
                return bytes(msg[4 : 4 + size])
    raise SniError(f"ClientHello spread over more than {MAX_RECORDS} records")


class _Reader:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data, self.pos = data, pos
        self.end = len(data) if end is None else end

    @property
    def left(self) -> int:
        return self.end - self.pos

    def take(self, n: int, what: str) -> int:
        """Skip n bytes; returns where they start."""
        if n > self.left:
            raise SniError(f"ClientHello truncated in {what}")
        start = self.pos
        self.pos += n
        return start

    def uint(self, size: int, what: str) -> int:
        start = self.take(size, what)
        return int.from_bytes(self.data[start : start + size], "big")

    def vector(self, size: int, what: str) -> _Reader:
        """A length-prefixed field (length of `size` bytes), as its own bounded reader."""
        n = self.uint(size, what)
        start = self.take(n, what)
        return _Reader(self.data, start, start + n)


def server_name(body: bytes) -> str | None:
    """The host_name in a ClientHello body (lower case, no trailing dot), or None if absent."""
    r = _Reader(body)
    r.take(2 + 32, "version/random")
    if r.vector(1, "session id").left > 32:
        raise SniError("session id longer than 32 bytes")
    suites = r.vector(2, "cipher suites")
    if suites.left < 2 or suites.left % 2:
        raise SniError("bad cipher suite list")
    if r.vector(1, "compression methods").left < 1:
        raise SniError("no compression method")
    if r.left == 0:
        return None  # no extensions at all
    exts = r.vector(2, "extensions")
    if r.left:
        raise SniError("bytes after the extensions")
    found: str | None = None
    seen = False
    while exts.left:
        etype = exts.uint(2, "extension type")
        ext = exts.vector(2, "extension")
        if etype != _EXT_SERVER_NAME:
            continue
        if seen:
            raise SniError("two server_name extensions")
        seen = True
        names = ext.vector(2, "server name list")
        if ext.left or names.left == 0:
            raise SniError("bad server_name extension")
        while names.left:
            kind = names.uint(1, "name type")
            entry = names.vector(2, "host name")
            if kind != _HOST_NAME or found is not None:
                continue  # one host_name counts; unknown name types are skipped
            raw = body[entry.pos : entry.end]
            if not 1 <= len(raw) <= 253 or not set(raw) <= _HOST_CHARS:
                raise SniError("bad host_name")
            found = raw.decode("ascii").lower().rstrip(".")
    return found


class SniReader:
    """One public TLS connection until its ClientHello says where it goes."""

    __slots__ = ("domain", "deadline", "max_hello", "_raw", "_need", "_done")

    def __init__(
        self, domain: str, now: float, *, max_hello: int = MAX_HELLO, timeout: float = HEAD_TIMEOUT
    ) -> None:
        self.domain = domain.lower().strip(".")
        self.deadline = now + timeout
        self.max_hello = max_hello
        self._raw = bytearray()
        self._need = 5  # parse again only once this many bytes are here
        self._done = False

    def receive_data(self, data: bytes, now: float) -> Route | Reject | None:
        """Bytes from the public peer (b"" = it closed); None until the hello is complete."""
        if self._done:
            raise RuntimeError("SniReader already decided")
        if now >= self.deadline or not data:
            why = "ClientHello not complete in time" if data else "closed before the ClientHello"
            return self._decide(Reject(0, why, b""))
        self._raw += data
        if len(self._raw) < self._need:
            return None
        try:
            body = client_hello(self._raw, self.max_hello)
            if isinstance(body, int):
                self._need = body
                return None
            host = server_name(body)
        except SniError as exc:
            return self._decide(Reject(ALERT_DECODE_ERROR, str(exc), alert(ALERT_DECODE_ERROR)))
        name = name_for_host(host, self.domain) if host else None
        if name is None or host is None:
            what = f"no tunnel for {host}" if host else "ClientHello without server_name"
            return self._decide(
                Reject(ALERT_UNRECOGNIZED_NAME, what, alert(ALERT_UNRECOGNIZED_NAME))
            )
        return self._decide(Route(name, host, bytes(self._raw)))

    def handle_timer(self, now: float) -> Reject | None:
        if self._done or now < self.deadline:
            return None
        return self._decide(Reject(0, "ClientHello not complete in time", b""))

    def _decide(self, decision: _D) -> _D:
        self._done = True
        self._raw = bytearray()
        return decision
