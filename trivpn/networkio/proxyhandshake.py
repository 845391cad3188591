"""Sans-IO proxy handshakes: HTTP CONNECT and SOCKS5 (RFC 1928/1929).

Each core is driven by `trivpn.networkio.proxy`: `data_to_send()` gives the bytes to write,
`receive_data(data)` takes what the proxy said, `done` turns true once the tunnel through the
proxy stands, and `leftover` keeps bytes that arrived behind the proxy's reply (the start of
the OpenVPN stream). Kept apart from the trio driver so every parser here is unit-testable
and fuzzable without sockets.
"""

from __future__ import annotations

import base64
import ipaddress
import struct
from collections.abc import Sequence

from trivpn.errors import ConfigError, RemoteProtocolError
from trivpn.profile.profile import HTTPProxyOptions

#: A proxy reply larger than this (status line + headers, or SOCKS messages) is refused.
MAX_REPLY_BYTES = 16384


# -- errors of the cores ------------------------------------------------------------------


class ProxyError(RemoteProtocolError):
    """The proxy broke its protocol (bad reply) or refused us (see the subclasses)."""


class ProxyRefused(ProxyError):
    """The proxy answered, but will not open a tunnel to the target."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class ProxyAuthRequired(ProxyRefused):
    """The proxy wants credentials we did not send (or rejected the ones we sent)."""

    def __init__(self, message: str, code: int, schemes: Sequence[str], sent_credentials: bool):
        super().__init__(message, code)
        self.schemes = tuple(schemes)
        self.sent_credentials = sent_credentials


def _target_text(host: str, port: int) -> str:
    """`host:port` in URI authority form (an IPv6 literal gets brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_field(what: str, value: str) -> str:
    if any(c in value for c in "\r\n\0") or not value.isascii():
        raise ConfigError(f"{what} {value!r} contains characters an HTTP header cannot carry")
    return value


def _check_credentials(credentials: tuple[str, str] | None, *, limit: int | None) -> None:
    if credentials is None:
        return
    user, password = credentials
    if not user:
        raise ConfigError("proxy username is empty")
    if limit is not None:
        for what, value in (("username", user), ("password", password)):
            if len(value.encode()) > limit:
                raise ConfigError(f"SOCKS5 proxy {what} is longer than {limit} bytes")


# -- HTTP CONNECT -------------------------------------------------------------------------


_AUTH_HEADERS = ("proxy-authenticate", "www-authenticate")


class HTTPConnectHandshake:
    """Sans-IO `CONNECT host:port` exchange with an HTTP proxy."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        options: HTTPProxyOptions | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        opts = options or HTTPProxyOptions()
        if not host or not 1 <= port <= 65535:
            raise ConfigError(f"invalid proxy target {host!r} port {port}")
        if opts.version not in ("1.0", "1.1"):
            raise ConfigError(f"http-proxy-option VERSION must be 1.0 or 1.1, not {opts.version!r}")
        _check_credentials(credentials, limit=None)
        if credentials is not None and ":" in credentials[0]:
            raise ConfigError("an HTTP Basic proxy username cannot contain ':'")
        target = _check_field("proxy target", _target_text(host, port))
        lines = [f"CONNECT {target} HTTP/{opts.version}"]
        host_sent = False
        for name, value in opts.headers:
            if value is None:
                line = _check_field("custom header", name)
                host_sent |= line.lower().startswith("host:")
            else:
                line = f"{_check_field('custom header', name)}: {_check_field('custom header', value)}"
                host_sent |= name.lower() == "host"
            lines.append(line)
        if not host_sent:
            lines.append(f"Host: {target}")
        if opts.agent:
            lines.append(f"User-Agent: {_check_field('AGENT', opts.agent)}")
        if credentials is not None:
            token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
            lines.append(f"Proxy-Authorization: Basic {token}")
        self._out = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self._buf = bytearray()
        self.sent_credentials = credentials is not None
        self.done = False
        self.leftover = b""
        #: status code and reason once the reply has been parsed
        self.status: int | None = None
        self.reason = ""

    def data_to_send(self) -> bytes:
        """The CONNECT request, once; afterwards nothing."""
        out, self._out = self._out, b""
        return out

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the proxy; raises `ProxyError` for a refusal or a bad reply."""
        if self.done:
            self.leftover += data
            return
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_REPLY_BYTES:
                raise ProxyError(f"HTTP proxy reply headers exceed {MAX_REPLY_BYTES} bytes")
            return
        head = bytes(self._buf[:end]).decode("latin-1")
        rest = bytes(self._buf[end + 4 :])
        self._buf.clear()
        status_line, *header_lines = head.split("\r\n")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not (
            parts[1].isascii() and parts[1].isdigit() and len(parts[1]) == 3
        ):
            raise ProxyError(f"HTTP proxy sent a malformed status line {status_line[:80]!r}")
        status = int(parts[1])
        reason = parts[2].strip() if len(parts) > 2 else ""
        self.status, self.reason = status, reason
        shown = f"{status} {reason}".strip()
        if 200 <= status < 300:
            self.done = True
            self.leftover = rest
            return
        # 407 is the standard answer; some proxies (tinyproxy) say 401 to wrong credentials.
        if status in (401, 407):
            schemes = []
            for line in header_lines:
                name, _, value = line.partition(":")
                if name.strip().lower() in _AUTH_HEADERS and value.strip():
                    schemes.append(value.strip().split(None, 1)[0].capitalize())
            if self.sent_credentials:
                msg = f"HTTP proxy rejected our credentials ({shown})"
            else:
                offered = ", ".join(schemes) or "no scheme named"
                msg = f"HTTP proxy requires authentication ({shown}; offers {offered})"
            raise ProxyAuthRequired(msg, status, schemes, self.sent_credentials)
        raise ProxyRefused(f"HTTP proxy refused the connection: {shown}", status)


# -- SOCKS5 -------------------------------------------------------------------------------

SOCKS_VERSION = 5
METHOD_NONE = 0x00
METHOD_USERPASS = 0x02
METHOD_REFUSED = 0xFF
CMD_CONNECT = 0x01
ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04
USERPASS_VERSION = 0x01

#: RFC 1928 §6 reply codes.
SOCKS_REPLIES = {
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}


class Socks5Handshake:
    """Sans-IO SOCKS5 CONNECT (RFC 1928) with optional username/password (RFC 1929)."""

    def __init__(
        self, host: str, port: int, *, credentials: tuple[str, str] | None = None
    ) -> None:
        if not host or not 1 <= port <= 65535:
            raise ConfigError(f"invalid proxy target {host!r} port {port}")
        _check_credentials(credentials, limit=255)
        self._credentials = credentials
        self._request = bytes((SOCKS_VERSION, CMD_CONNECT, 0)) + _socks_address(host) + struct.pack(
            ">H", port
        )
        methods = [METHOD_NONE] if credentials is None else [METHOD_NONE, METHOD_USERPASS]
        self._out = bytes((SOCKS_VERSION, len(methods), *methods))
        self._buf = bytearray()
        self._state = "method"  # method -> auth -> reply -> done
        self.done = False
        self.leftover = b""
        self.method: int | None = None

    def data_to_send(self) -> bytes:
        out, self._out = self._out, b""
        return out

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the proxy; raises `ProxyError` for a refusal or a bad reply."""
        if self.done:
            self.leftover += data
            return
        self._buf += data
        if len(self._buf) > MAX_REPLY_BYTES:
            raise ProxyError("SOCKS5 proxy sent more than a handshake's worth of bytes")
        while not self.done and self._step():
            pass

    def _take(self, n: int) -> bytes | None:
        if len(self._buf) < n:
            return None
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _step(self) -> bool:
        """Consume one complete message if buffered; False when more bytes are needed."""
        buf = self._buf
        if self._state == "method":
            msg = self._take(2)
            if msg is None:
                return False
            ver, method = msg
            if ver != SOCKS_VERSION:
                raise ProxyError(f"not a SOCKS5 proxy (it answered version {ver})")
            if method == METHOD_REFUSED:
                if self._credentials is None:
                    raise ProxyAuthRequired(
                        "SOCKS5 proxy requires authentication (it accepts no method we offered)",
                        method,
                        ["username/password"],
                        False,
                    )
                raise ProxyRefused(
                    "SOCKS5 proxy accepts neither no-authentication nor username/password", method
                )
            self.method = method
            if method == METHOD_NONE:
                self._out += self._request
                self._state = "reply"
            elif method == METHOD_USERPASS and self._credentials is not None:
                user, password = (s.encode() for s in self._credentials)
                self._out += (
                    bytes((USERPASS_VERSION, len(user))) + user + bytes((len(password),)) + password
                )
                self._state = "auth"
            else:
                raise ProxyError(f"SOCKS5 proxy chose method {method:#04x}, which we did not offer")
            return True
        if self._state == "auth":
            msg = self._take(2)
            if msg is None:
                return False
            ver, status = msg
            # RFC 1929 says version 1; some servers echo 5. Both mean this sub-negotiation.
            if ver not in (USERPASS_VERSION, SOCKS_VERSION):
                raise ProxyError(f"SOCKS5 proxy sent a malformed authentication reply (version {ver})")
            if status != 0:
                raise ProxyAuthRequired(
                    "SOCKS5 proxy rejected our username/password", status, ["username/password"], True
                )
            self._out += self._request
            self._state = "reply"
            return True
        # reply: VER REP RSV ATYP BND.ADDR BND.PORT
        if len(buf) < 4:
            return False
        ver, rep, _rsv, atyp = buf[0], buf[1], buf[2], buf[3]
        if ver != SOCKS_VERSION:
            raise ProxyError(f"SOCKS5 proxy sent a reply of version {ver}")
        if rep != 0:
            why = SOCKS_REPLIES.get(rep, f"unknown reply code {rep:#04x}")
            raise ProxyRefused(f"SOCKS5 proxy refused the connection: {why}", rep)
        if atyp == ATYP_IPV4:
            size = 4 + 4 + 2
        elif atyp == ATYP_IPV6:
            size = 4 + 16 + 2
        elif atyp == ATYP_DOMAIN:
            if len(buf) < 5:
                return False
            size = 4 + 1 + buf[4] + 2
        else:
            raise ProxyError(f"SOCKS5 proxy reply has unknown address type {atyp:#04x}")
        if self._take(size) is None:
            return False
        self.done = True
        self.leftover = bytes(self._buf)
        self._buf.clear()
        return True


def _socks_address(host: str) -> bytes:
    """ATYP + address: IP literals as such, names passed on for the proxy to resolve."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            name = host.encode("idna") if not host.isascii() else host.encode()
        except UnicodeError as exc:  # an empty or over-long label, say
            raise ConfigError(f"{host!r} is not a valid host name ({exc})") from None
        if not 1 <= len(name) <= 255:
            raise ConfigError(f"host name {host!r} is too long for SOCKS5 (255 bytes)") from None
        return bytes((ATYP_DOMAIN, len(name))) + name
    if ip.version == 4:
        return bytes((ATYP_IPV4,)) + ip.packed
    return bytes((ATYP_IPV6,)) + ip.packed


Handshake = HTTPConnectHandshake | Socks5Handshake
