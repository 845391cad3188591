"""tls-crypt-v2 on a TCP listener: the client's key comes with its first packet.

On TCP there is no cookie (the connection already proved the address), so the server
reads the client's first framed packet itself, before the session exists: it must be a
P_CONTROL_HARD_RESET_CLIENT_V3 whose appended wrapped key (WKc) opens with the server key.
The session is then built with a wrap keyed by the client's key Kc and that packet queued
as its first. A connection that sends anything else, or nothing within the hand window, is
closed; nothing about it is kept.
"""

from __future__ import annotations

import socket

import trio

from trivpn.controlchannel.wrap import ControlWrap
from trivpn.controlchannel.wrapv2 import TLSCryptV2Server, split_wkc
from trivpn.errors import RemoteProtocolError
from trivpn.server.demux_types import WrapFactory
from trivpn.wire import P_CONTROL_HARD_RESET_CLIENT_V3, P_KEY_ID_MASK, P_OPCODE_SHIFT

__all__ = ["ClientKey", "open_first_packet", "read_first_packet"]

#: A V3 reset is small (~350 bytes with the WKc); anything announced larger is refused.
MAX_FIRST_PACKET = 2048


class ClientKey:
    """What the first packet gave: wraps keyed by Kc, Kc itself and the WKc."""

    __slots__ = ("wraps", "key", "wkc")

    def __init__(self, wraps: WrapFactory, key: bytes, wkc: bytes) -> None:
        self.wraps = wraps
        self.key = key
        self.wkc = wkc


async def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        await trio.lowlevel.wait_readable(conn)
        try:
            chunk = conn.recv(n - len(buf))  # never more than asked: the rest is the session's
        except BlockingIOError:
            continue
        if not chunk:
            raise RemoteProtocolError("the connection closed before its first packet")
        buf += chunk
    return buf


async def read_first_packet(conn: socket.socket) -> bytes:
    """One uint16-length-framed packet from the stream (the caller bounds the time)."""
    try:
        n = int.from_bytes(await _recv_exactly(conn, 2), "big")
        if not 0 < n <= MAX_FIRST_PACKET:
            raise RemoteProtocolError(f"first packet of {n} bytes")
        return await _recv_exactly(conn, n)
    except OSError as exc:
        raise RemoteProtocolError(f"receive failed: {exc.strerror}") from None


def open_first_packet(packet: bytes, v2: TLSCryptV2Server, now: float) -> ClientKey:
    """Check that `packet` is a V3 reset sealed with the key in its WKc (pure; raises
    RemoteProtocolError otherwise)."""
    if not packet or packet[0] >> P_OPCODE_SHIFT != P_CONTROL_HARD_RESET_CLIENT_V3 or packet[0] & P_KEY_ID_MASK:
        raise RemoteProtocolError("the first packet is not a tls-crypt-v2 client reset")
    wrapped, wkc = split_wkc(packet)
    kc = v2.open(wkc).key
    v2.wrap_for(kc).unwrap(wrapped, now)  # authentic under that key, or RemoteProtocolError

    def wraps(pid: int) -> ControlWrap:
        return v2.wrap_for(kc, pid)

    return ClientKey(wraps, kc.data, wkc)
