"""Hand a demultiplexed UDP batch to its client, and let the client float when it should.

A float candidate is a batch the demux routed by peer-id (P_DATA_V2) or by the client's
session id (its control packets) from an address that is not the session's. The session
moves there only once one of those packets is authentic for it: the client's data channel
would accept it (valid tag under a current key, packet id not seen before;
`Decryptor.would_accept`), or its control channel would, under a key only that client has
(tls-crypt-v2's client key, dynamic tls-crypt; `PacketMuxer.authenticates`). Then `ServerDemux.confirm_float` re-keys the
address table, the client's writer sends to the new address from its next batch on, and the
status report shows it. A forged, truncated or replayed packet from a new address never
moves the session (it is still delivered, and the data channel drops and counts it), and an
address another session holds is refused (`floats_refused`).
"""

from __future__ import annotations

import logging

from trivpn.server.clients import Listening
from trivpn.server.clientsession import ClientSession
from trivpn.server.demux_types import Deliver
from trivpn.wire import is_data_byte0

__all__ = ["deliver_udp"]

log = logging.getLogger("trivpn.server")


def deliver_udp(sock: Listening, action: Deliver, now: float) -> None:
    """`now` is the trio clock (the control channel's replay windows run on it)."""
    client = sock.sessions.get(action.session)
    if client is None:
        return
    if action.float_candidate:
        if any(_authentic(client, d, now) for d in action.datagrams):
            old = client.addr
            if sock.demux.confirm_float(action.session, action.addr):
                client.addr = action.addr  # type: ignore[assignment]  # (host, port) on UDP
                log.info("%r floated from %s:%s", client, *old)
            else:
                log.warning("%r: float to %r refused (another client holds it)", client, action.addr)
    client.deliver(action.datagrams)


def _authentic(client: ClientSession, datagram: bytes, now: float) -> bool:
    if datagram and is_data_byte0(datagram[0]):
        link = client.stack.data.link
        return link.rx is not None and link.rx.would_accept(datagram, link.clock())
    return client.stack.muxer.authenticates(datagram, now)
