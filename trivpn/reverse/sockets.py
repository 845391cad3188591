"""Socket helpers of the reverse tunnel's services: bare non-blocking OS sockets.

The services do their own non-blocking I/O on plain sockets, waiting with trio's
wait_readable / wait_writable only when the kernel says it would block; these helpers
take sockets over from trio, dial, gather-write, and close (with a TCP reset when asked).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections import deque

import trio

from trivpn.errors import ConfigError
from trivpn.hostnames import check_host_name

IOV_BATCH = 64  # buffers per sendmsg()
_LINGER_RST = struct.pack("ii", 1, 0)

Buffers = deque[bytes | memoryview]


class EvictableScope:
    """A pending connection's handle in a `guard.PendingTable`: evicting it cancels the
    connection's task (which then closes the socket)."""

    __slots__ = ("scope",)

    def __init__(self) -> None:
        self.scope = trio.CancelScope()

    def evict(self) -> None:
        self.scope.cancel()


def parse_hostport(value: str, what: str, default_host: str = "") -> tuple[str, int]:
    """'HOST:PORT', '[v6]:PORT' or ':PORT' -> (host, port); one clear line on error."""
    host, sep, port_s = value.rpartition(":")
    if not sep:
        raise ConfigError(f"{what} must be HOST:PORT, not {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if "[" in host or "]" in host:
        raise ConfigError(f"{what} must be HOST:PORT or [IPv6]:PORT, not {value!r}")
    try:
        port = int(port_s)
    except ValueError:
        raise ConfigError(f"{what} has a bad port: {value!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what} port must be 0..65535, not {port}")
    check_host_name(host, what)
    return host or default_host, port


async def bind_refused(host: str) -> str | None:
    """Why TCP ports cannot be bound on `host` (a port-0 socket per address), or None.

    The public host is bound only when a client binds, so an address not on this machine
    would otherwise fail every client's bind while the relay itself started fine.
    """
    try:
        infos = await trio.socket.getaddrinfo(
            host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        return str(exc.strerror or exc)
    for family, type_, proto, _name, addr in infos:
        with socket.socket(family, type_, proto) as probe:
            try:
                probe.bind(addr)
            except OSError as exc:
                return str(exc.strerror or exc)
    return None


def abort_socket(stream: trio.abc.Stream) -> None:
    """Close so that the peer sees a TCP RST (SO_LINGER 0), not an orderly FIN."""
    sock = getattr(stream, "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass
        sock.close()


def plain_socket(tsock: trio.socket.SocketType) -> socket.socket:
    """Take the OS socket out of a trio socket (which is unusable afterwards)."""
    family, type_, proto = tsock.family, tsock.type, tsock.proto
    sock = socket.socket(family, type_, proto, fileno=tsock.detach())
    sock.setblocking(False)
    if family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def close_plain(sock: socket.socket, *, reset: bool = False) -> None:
    """Close an owned socket, waking any task waiting on it; `reset` sends RST, not FIN."""
    if sock.fileno() < 0:
        return
    if reset:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass
    trio.lowlevel.notify_closing(sock)
    sock.close()


async def connect_plain(host: str, port: int) -> socket.socket:
    """TCP connect with a bare non-blocking socket, trying each address in turn.

    Much lighter than `trio.open_tcp_stream` (no happy-eyeballs nursery and tasks per
    dial), which matters when thousands of streams open at once; for the local service
    behind `expose` trying the addresses one after the other is enough.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"no address for {host}")
    for family, type_, proto, _name, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            rc = sock.connect_ex(addr)
            if rc == errno.EINPROGRESS:
                await trio.lowlevel.wait_writable(sock)
                rc = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if rc:
                raise OSError(rc, os.strerror(rc))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            close_plain(sock)
            error = exc
        except BaseException:
            close_plain(sock)
            raise
    raise error


def send_some(sock: socket.socket, bufs: Buffers) -> int:
    """One non-blocking gather write of the queued buffers; drops what went, returns its size."""
    try:
        if len(bufs) == 1:
            n = sock.send(bufs[0])
        else:
            n = sock.sendmsg([bufs[i] for i in range(min(len(bufs), IOV_BATCH))])
    except BlockingIOError:
        return 0
    left = n
    while left:
        first = bufs[0]
        size = len(first)
        if size <= left:
            bufs.popleft()
            left -= size
        else:
            bufs[0] = memoryview(first)[left:]
            left = 0
    return n


def peer_name(stream: trio.SocketStream | trio.socket.SocketType | socket.socket) -> str:
    sock = stream.socket if isinstance(stream, trio.SocketStream) else stream
    try:
        addr = sock.getpeername()
    except OSError:
        return "?"
    return format_addr(addr)


def format_addr(addr: object) -> str:
    if isinstance(addr, tuple):
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(addr)


NOFILE_TARGET = 1 << 20  # enough for any relay; some hard limits are "unlimited"


def raise_nofile_limit(target: int = NOFILE_TARGET) -> tuple[int, int]:
    """Raise the soft open-file limit towards the hard one (and `target`); (old, new).

    The default soft limit (often 1,024) runs out long before memory does: a few hundred
    idle public or pre-auth sockets would make accept() and connect() fail with EMFILE.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(hard, target)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, want
    return soft, soft


def source_host(stream: trio.SocketStream) -> str:
    """The peer's address without the port: what per-source limits count."""
    try:
        addr = stream.socket.getpeername()
    except OSError:
        return "?"
    return str(addr[0]) if isinstance(addr, tuple) else str(addr)
