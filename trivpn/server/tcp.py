"""A TCP listener of the server: one session per connection.

No cookie: the TCP handshake already proved the peer's address, so each accepted
connection gets a fresh server-role muxer (the ordinary reset exchange) and its session
runs over networkio on that connection. The listener's demultiplexer only counts the
session against max-clients and gives it a peer-id.
"""

from __future__ import annotations

import logging
import secrets
import socket
from functools import partial

from trivpn.networkio import run_networkio
from trivpn.networkio.transport import Endpoint, TCPTransport
from trivpn.packetmuxer import PacketMuxer
from trivpn.server.clients import ClientTable, Listening
from trivpn.server.clientsession import ClientSession
from trivpn.server.hub import Hub
from trivpn.server.sessionparts import SessionParts
from trivpn.server.sockets import accept

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
    while True:
        conn, addr = await accept(raw)
        admitted = sock.demux.add_stream_session(addr)
        if admitted is None:
            log.warning("refusing TCP client %s:%s: max-clients reached or shutting down", *addr)
            conn.close()
            continue
        session, peer_id = admitted
        muxer = PacketMuxer(parts.wrap_factory(1), new_session_id(), is_server=True)
        client = ClientSession(hub.new_key(), session, peer_id, addr, muxer, parts, hub, proto="tcp")
        transport = TCPTransport(conn, Endpoint(addr[0], addr[1], "tcp", conn.family, addr))
        table.start(sock, client, partial(run_networkio, transport, client.net_up, client.net_down))
