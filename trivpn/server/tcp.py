"""A TCP listener of the server: one session per connection.

No cookie: the TCP handshake already proved the peer's address, so each accepted
connection gets a fresh server-role muxer (the ordinary reset exchange) and its session
runs over networkio on that connection. The listener's demultiplexer only counts the
session against max-clients and gives it a peer-id. With tls-crypt-v2 the first packet is
read here (tcpv2.py, bounded by the hand window) so that the session's wrap is keyed with
the client's own key.
"""

from __future__ import annotations

import logging
import secrets
import socket
from functools import partial

import trio

from trivpn.errors import RemoteProtocolError
from trivpn.networkio import run_networkio
from trivpn.networkio.framing import server_frame_limit
from trivpn.networkio.transport import Endpoint, TCPTransport
from trivpn.packetmuxer import PacketMuxer
from trivpn.server.clients import ClientTable, Listening
from trivpn.server.clientsession import ClientSession
from trivpn.server.hub import Hub
from trivpn.server.sessionparts import SessionParts
from trivpn.server.sockets import accept
from trivpn.server.tcpv2 import ClientKey, open_first_packet, read_first_packet

__all__ = ["new_session_id", "run_tcp_acceptor"]

log = logging.getLogger("trivpn.server")


def new_session_id() -> bytes:
    """A random, non-zero session id."""
    while not any(sid := secrets.token_bytes(8)):
        pass
    return sid


async def run_tcp_acceptor(
    raw: socket.socket, sock: Listening, table: ClientTable, parts: SessionParts, hub: Hub
) -> None:
    async with trio.open_nursery() as nursery:  # tls-crypt-v2: first packets being read
        while True:
            conn, addr = await accept(raw)
            admitted = sock.demux.add_stream_session(addr)
            if admitted is None:
                log.warning("refusing TCP client %s:%s: max-clients reached or shutting down", *addr)
                conn.close()
                continue
            if parts.tls_crypt_v2 is None:
                muxer = PacketMuxer(parts.wrap_factory(1), new_session_id(), is_server=True)
                _start(conn, addr, admitted, muxer, parts, sock, table, hub, None)
            else:
                nursery.start_soon(_start_v2, conn, addr, admitted, parts, sock, table, hub)


async def _start_v2(
    conn: socket.socket, addr: tuple[str, int], admitted: tuple[int, int], parts: SessionParts,
    sock: Listening, table: ClientTable, hub: Hub,
) -> None:
    """Read and check the first packet (tcpv2.py), then start the session keyed by its Kc."""
    assert parts.tls_crypt_v2 is not None
    key: ClientKey | None = None
    first = b""
    try:
        with trio.move_on_after(parts.config.hand_window):
            first = await read_first_packet(conn)
            key = open_first_packet(first, parts.tls_crypt_v2, trio.current_time())
    except RemoteProtocolError as exc:
        log.warning("TCP client %s:%s refused: %s", *addr, exc)
    finally:
        if key is None:  # refused, silent for the hand window, or the server is stopping
            sock.demux.remove_session(admitted[0])
            conn.close()
    if key is None:
        return
    muxer = PacketMuxer(key.wraps(1), new_session_id(), is_server=True, client_wkc=key.wkc)
    _start(conn, addr, admitted, muxer, parts.for_client_key(key.key), sock, table, hub, first)


def _start(
    conn: socket.socket, addr: tuple[str, int], admitted: tuple[int, int], muxer: PacketMuxer,
    parts: SessionParts, sock: Listening, table: ClientTable, hub: Hub, first: bytes | None,
) -> None:
    session, peer_id = admitted
    client = ClientSession(hub.new_key(), session, peer_id, addr, muxer, parts, hub, proto="tcp")
    if first is not None:
        client.net_up.send_nowait([first])
    tun_mtu = parts.config.tun_mtu or 1500
    link = client.stack.data.link

    def frame_limit() -> int:  # a length over it closes the connection at once
        return server_frame_limit(link.rx is not None, tun_mtu)

    transport = TCPTransport(conn, Endpoint(addr[0], addr[1], "tcp", conn.family, addr), frame_limit)
    table.start(sock, client, partial(run_networkio, transport, client.net_up, client.net_down))
