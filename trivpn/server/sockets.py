"""Server sockets: binding a configured listener, and accepting TCP connections.

A listener without `local` and without a pinned family binds the IPv6 wildcard with
IPV6_V6ONLY off, so one socket serves both families (IPv4 peers appear as
"::ffff:a.b.c.d"); a host without IPv6 falls back to the IPv4 wildcard. A name binds the
first address that works (one socket per resolved address is a later step).
"""

from __future__ import annotations

import errno
import logging
import socket

import trio

from trivpn.errors import ConfigError
from trivpn.networkio.transport import SOCKET_BUFFER
from trivpn.server.config_model import Listener

__all__ = ["accept", "bind_listener"]

LISTEN_BACKLOG = 64
#: accept() errors that mean "no resources now", not "this connection failed"
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: how long accepting pauses after one of them (trio's serve_listeners waits as long)
ACCEPT_PAUSE = 0.1

log = logging.getLogger("trivpn.server")

Addr = tuple[str, int]


def bind_listener(listener: Listener) -> socket.socket:
    """A non-blocking socket bound (TCP: listening) as `listener` says; ConfigError if it
    cannot be."""
    kind = socket.SOCK_STREAM if listener.proto == "tcp" else socket.SOCK_DGRAM
    family = {4: socket.AF_INET, 6: socket.AF_INET6}.get(listener.family or 0, socket.AF_UNSPEC)
    candidates: list[tuple[socket.AddressFamily, Addr]]
    if listener.local is None and family == socket.AF_UNSPEC:
        candidates = [(socket.AF_INET6, ("::", listener.port)), (socket.AF_INET, ("0.0.0.0", listener.port))]
    else:
        try:
            infos = socket.getaddrinfo(listener.local, listener.port, family, kind, 0, socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise ConfigError(f"cannot resolve local address {listener.local!r}: {exc.strerror}") from None
        candidates = [(fam, (str(sa[0]), int(sa[1]))) for fam, _t, _p, _c, sa in infos]
    last: OSError | None = None
    for fam, sockaddr in candidates:  # the first that binds (several sockets: a later step)
        sock = socket.socket(fam, kind)
        try:
            if fam == socket.AF_INET6 and listener.family is None:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            else:
                for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            sock.bind(sockaddr)
            if kind == socket.SOCK_STREAM:
                sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    where = f"{listener.local or '*'}:{listener.port}"
    raise ConfigError(f"cannot listen on {listener.proto} {where}: {last.strerror if last else 'no address'}")


async def accept(sock: socket.socket) -> tuple[socket.socket, Addr]:
    """The next connection (non-blocking, TCP_NODELAY) and its peer's (host, port).

    Running out of descriptors or memory (a flood of connections) pauses accepting for
    `ACCEPT_PAUSE` seconds and tries again, as trio's serve_listeners does, instead of
    ending the server; errors of one pending connection skip that connection (accept(2):
    Linux reports network errors of the new socket from accept)."""
    paused = 0
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            conn, addr = sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            continue
        except OSError as exc:
            if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                continue  # that connection's own error
            if not paused:  # one line per shortage, not ten a second
                log.warning("cannot accept TCP connections (%s); trying every %g s", exc.strerror, ACCEPT_PAUSE)
            paused += 1
            await trio.sleep(ACCEPT_PAUSE)
            continue
        try:
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            conn.close()  # reset already
            continue
        return conn, (addr[0], addr[1])
