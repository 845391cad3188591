"""Proxies as pluggable transports: HTTP CONNECT and SOCKS5 in front of OpenVPN over TCP.

Theory of operation
-------------------
A proxy only changes how the TCP stream to the server is *opened*; once its handshake is
over the stream carries OpenVPN's length-framed packets exactly as a direct connection does.
So a proxy plugs in as "another way to get a `TCPTransport`":

* a **sans-IO handshake core** per proxy kind (`HTTPConnectHandshake`,
  `Socks5Handshake`, in `networkio.proxyhandshake`):
  `data_to_send()` gives the bytes to write, `receive_data(data)` takes what the proxy said,
  `done` turns true when the tunnel through the proxy stands, and `leftover` holds any bytes
  that arrived behind the proxy's reply (the start of the OpenVPN stream: never lost).
  Anything the proxy says that we refuse raises a `ProxyError` (a `RemoteProtocolError`);
* one **trio driver**, `open_proxy_transport`, that connects to the proxy (every address of
  its name, in resolver order), pumps a core under a deadline, and returns a
  `ProxiedTCPTransport`: a `TCPTransport` whose `endpoint` is the proxy (the address the
  socket really talks to, which is also what a host route must keep outside the tunnel)
  and whose `target` is the OpenVPN server as the user named it.

The server's name is never resolved locally: it is handed to the proxy (HTTP `CONNECT
name:port`, SOCKS5 address type 3), as OpenVPN does, so a client behind a proxy needs no DNS.

HTTP authentication follows `http-proxy host port [authfile|auto|auto-nct] [basic|none]`:
`basic` sends `Proxy-Authorization: Basic` at once; `auto` first tries without and, if the
proxy answers 407 offering Basic, connects again with credentials (`auto-nct` refuses to
send them in clear text). SOCKS5 offers "no authentication" and, when credentials are
configured, username/password (RFC 1929).
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Sequence

import trio

from trivpn.errors import ConfigError, FatalError
from trivpn.networkio.proxyhandshake import (
    MAX_REPLY_BYTES,
    SOCKS_REPLIES,
    Handshake,
    HTTPConnectHandshake,
    ProxyAuthRequired,
    ProxyError,
    ProxyRefused,
    Socks5Handshake,
    _target_text,
)
from trivpn.networkio.transport import (
    Endpoint,
    Reporter,
    TCPTransport,
    TransportError,
    open_transport,
    resolve,
)
from trivpn.profile.profile import HTTPProxyOptions, Profile, ProxySpec

#: Default bound on connecting to the proxy plus its whole handshake.
DEFAULT_HANDSHAKE_TIMEOUT = 15.0
_RECV_SIZE = 4096

#: Asks the user for proxy credentials: gets a description of the proxy, returns (user, password).
CredentialsPrompt = Callable[[str], Awaitable[tuple[str, str]]]


# -- the transport ------------------------------------------------------------------------


class ProxiedTCPTransport(TCPTransport):
    """A TCP transport whose stream runs through a proxy; same interface as `TCPTransport`.

    `endpoint` is the proxy (the socket's real peer); `target` is the OpenVPN server.
    """

    def __init__(
        self,
        sock: socket.socket,
        endpoint: Endpoint,
        *,
        kind: str,
        target: tuple[str, int],
        leftover: bytes = b"",
    ) -> None:
        super().__init__(sock, endpoint)
        self.kind = kind
        self.target = target
        self.rx_bytes += len(leftover)
        # OpenVPN bytes that came in behind the proxy's reply: frame them now, hand them out first
        self._pending: list[bytes] = self._framer.feed(leftover) if leftover else []

    def describe(self) -> str:
        return f"{_target_text(*self.target)} via {self.kind} proxy {self.endpoint.describe()}"

    async def recv_batch(self) -> list[bytes]:
        if self._pending:
            batch, self._pending = self._pending, []
            self.rx_packets += len(batch)
            return batch
        return await super().recv_batch()


async def _pump(sock: socket.socket, hs: Handshake) -> None:
    """Run a handshake core over a connected non-blocking socket until it is done."""
    received = 0
    while True:
        out = memoryview(hs.data_to_send())
        while out:
            try:
                n = sock.send(out)
                out = out[n:]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
            except OSError as exc:
                raise TransportError(f"sending to the proxy failed: {exc.strerror}") from None
        if hs.done:
            return
        await trio.lowlevel.wait_readable(sock)
        try:
            data = sock.recv(_RECV_SIZE)
        except BlockingIOError:
            continue
        except OSError as exc:
            raise TransportError(f"receiving from the proxy failed: {exc.strerror}") from None
        if not data:
            raise TransportError("the proxy closed the connection during its handshake")
        received += len(data)
        if received > 4 * MAX_REPLY_BYTES:  # a bound even for a core that keeps asking
            raise ProxyError("the proxy handshake does not end")
        hs.receive_data(data)


async def proxy_handshake(
    kind: str,
    proxy_endpoints: Sequence[Endpoint],
    make_handshake: Callable[[], Handshake],
    target: tuple[str, int],
    *,
    deadline: float,
    report: Reporter | None = None,
) -> ProxiedTCPTransport:
    """Connect to the first proxy address that answers and run one handshake on it.

    Proxy-level refusals raise the core's `ProxyError`; a proxy that cannot be reached at
    all raises `TransportError`.
    """
    last: TransportError | None = None
    for ep in proxy_endpoints:
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            break
        try:
            plain = await open_transport(ep, connect_timeout=remaining)
        except TransportError as exc:
            last = exc
            if report is not None:
                report(f"{kind} proxy {ep.describe()}: {exc}")
            continue
        sock = plain.sock
        try:
            hs = make_handshake()
            with trio.move_on_at(deadline) as scope:
                await _pump(sock, hs)
            if scope.cancelled_caught:
                raise TransportError(f"{kind} proxy {ep.describe()} did not finish its handshake in time")
            return ProxiedTCPTransport(sock, ep, kind=kind, target=target, leftover=hs.leftover)
        except BaseException:
            plain.close()
            raise
    if last is not None:
        raise last
    raise TransportError(f"could not reach the {kind} proxy in time")


async def open_proxy_transport(
    kind: str,
    proxy: ProxySpec,
    host: str,
    port: int,
    *,
    http_options: HTTPProxyOptions | None = None,
    proto: str = "tcp",
    connect_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    prompt: CredentialsPrompt | None = None,
    report: Reporter | None = None,
    proxy_endpoints: Sequence[Endpoint] | None = None,
) -> ProxiedTCPTransport:
    """A TCP transport to the OpenVPN server `host`:`port` through an HTTP or SOCKS5 proxy.

    `proxy_endpoints`: the proxy's addresses, already resolved by the caller (the client
    resolved them to open the kill switch for exactly these, and may have fallen back to an
    earlier answer); None: resolved here.

    `kind` is "http" or "socks5". `proto` (tcp, tcp4, tcp6) picks the address family used
    to reach the proxy; `connect_timeout` bounds reaching the proxy and its handshake.
    Raises `TransportError` when the proxy cannot be reached or refuses
    the target (worth retrying), `FatalError` when it wants credentials we cannot give or
    rejects ours (retrying cannot help), `ConfigError` for unusable settings.
    """
    if kind not in ("http", "socks5"):
        raise ConfigError(f"unknown proxy kind {kind!r} (http or socks5)")
    if not proto.startswith("tcp"):
        raise ConfigError(f"a proxy carries TCP only; proto {proto} cannot use it")
    where = f"{kind} proxy {_target_text(proxy.host, proxy.port)}"
    deadline = trio.current_time() + connect_timeout
    if proxy_endpoints is None:
        try:
            proxy_endpoints = await resolve(proxy.host, proxy.port, proto)
        except TransportError as exc:
            raise TransportError(f"{where}: {exc}") from None
    endpoints = list(proxy_endpoints)

    credentials = proxy.credentials
    if credentials is None and (proxy.ask or (kind == "http" and proxy.auth == "basic")):
        credentials = await _ask(prompt, where)
    opts = http_options or HTTPProxyOptions()

    async def attempt(creds: tuple[str, str] | None) -> ProxiedTCPTransport:
        def make() -> Handshake:
            if kind == "http":
                return HTTPConnectHandshake(host, port, options=opts, credentials=creds)
            return Socks5Handshake(host, port, credentials=creds)

        try:
            return await proxy_handshake(
                kind, endpoints, make, (host, port), deadline=deadline, report=report
            )
        except ProxyAuthRequired:
            raise
        except ProxyError as exc:
            raise TransportError(f"{where}: {exc}") from None

    # SOCKS5 offers credentials in its method list; HTTP sends them up front only for `basic`.
    auto = kind == "http" and proxy.auth in ("auto", "auto-nct")
    first = None if kind == "http" and proxy.auth != "basic" else credentials
    try:
        return await attempt(first)
    except ProxyAuthRequired as exc:
        if not auto or exc.sent_credentials:
            raise FatalError(f"{where}: {exc}{_auth_hint(kind, exc)}") from None
        if "Basic" not in exc.schemes:
            raise FatalError(f"{where}: {exc}; only Basic authentication is supported") from None
        if proxy.auth == "auto-nct":
            raise FatalError(
                f"{where}: it wants Basic authentication, which sends the password in clear "
                "text and 'auto-nct' forbids"
            ) from None
    # `auto`: the proxy asked for Basic; a 407 usually ends the connection, so open a new one.
    if credentials is None:
        credentials = await _ask(prompt, where)
    if report is not None:
        report(f"{where} wants Basic authentication; connecting again with credentials")
    try:
        return await attempt(credentials)
    except ProxyAuthRequired as exc:
        raise FatalError(f"{where}: {exc}") from None


def _auth_hint(kind: str, exc: ProxyAuthRequired) -> str:
    if exc.sent_credentials:
        return ""
    if kind == "http":
        return " (give an auth file: 'http-proxy host port FILE basic', or 'auto')"
    return " (give an auth file: 'socks-proxy host port FILE')"


async def _ask(prompt: CredentialsPrompt | None, where: str) -> tuple[str, str]:
    if prompt is None:
        raise FatalError(f"{where} needs a username and password, and none can be asked for here")
    user, password = await prompt(where)
    if not user:
        raise FatalError(f"{where}: no username given")
    return user, password


def proxy_of(profile: Profile) -> tuple[str, ProxySpec] | None:
    """("http" | "socks5", spec) when the profile routes its TCP connection through a proxy."""
    if profile.http_proxy is not None:
        return "http", profile.http_proxy
    if profile.socks_proxy is not None:
        return "socks5", profile.socks_proxy
    return None


async def open_profile_proxy_transport(
    profile: Profile,
    host: str,
    port: int,
    proto: str,
    *,
    connect_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    prompt: CredentialsPrompt | None = None,
    report: Reporter | None = None,
    proxy_endpoints: Sequence[Endpoint] | None = None,
) -> ProxiedTCPTransport:
    """`open_proxy_transport` with the profile's proxy settings (it must have a proxy)."""
    via = proxy_of(profile)
    if via is None:
        raise ConfigError("the profile has no http-proxy or socks-proxy")
    kind, spec = via
    return await open_proxy_transport(
        kind,
        spec,
        host,
        port,
        http_options=profile.http_proxy_options,
        proto=proto,
        connect_timeout=connect_timeout,
        prompt=prompt,
        report=report,
        proxy_endpoints=proxy_endpoints,
    )


__all__ = [
    "MAX_REPLY_BYTES",
    "SOCKS_REPLIES",
    "CredentialsPrompt",
    "HTTPConnectHandshake",
    "ProxiedTCPTransport",
    "ProxyAuthRequired",
    "ProxyError",
    "ProxyRefused",
    "Socks5Handshake",
    "open_profile_proxy_transport",
    "open_proxy_transport",
    "proxy_handshake",
    "proxy_of",
]
