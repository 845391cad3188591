"""TCP stream framing: every OpenVPN packet is preceded by a uint16 big-endian length.

The framer is sans-IO and incremental: feed it whatever `recv` returned and it hands back
every complete packet, keeping the tail for the next call.
"""

from __future__ import annotations

from collections.abc import Iterable

from trivpn.errors import RemoteProtocolError

#: Smallest frame that can hold an OpenVPN packet (an opcode byte and a session id).
MIN_FRAME = 1
#: The length prefix is 16 bits, so nothing larger can be framed.
MAX_FRAME = 0xFFFF
#: The largest control packet a server accepts: a whole control packet is at most 2048
#: bytes (OpenVPN's TLS_CHANNEL_BUF_SIZE, the top of tls-mtu), plus a tls-crypt-v2 client's
#: WKc (at most 1024 bytes) appended to its reset and its retransmissions.
CONTROL_MAX_FRAME = 2048 + 1024
#: Room around a data packet's tun-mtu payload: opcode and peer-id, packet-id, IV or tag,
#: CBC padding, an HMAC of up to 64 bytes, the compression byte (about 110 in all).
DATA_OVERHEAD_MAX = 256


def server_frame_limit(keyed: bool, tun_mtu: int) -> int:
    """The largest TCP frame a server session reads: before its data keys, the largest
    control packet; after, also a data packet of `tun_mtu`. Anything announced larger
    closes the connection at once (OpenVPN: "Bad encapsulated packet length") instead of
    being read up to 64 kB for the hand window."""
    if not keyed:
        return CONTROL_MAX_FRAME
    return min(MAX_FRAME, max(CONTROL_MAX_FRAME, tun_mtu + DATA_OVERHEAD_MAX))


class FramingError(RemoteProtocolError):
    """A length prefix no OpenVPN packet can have: the stream is out of step for good.

    Anyone on the path can inject such bytes into a TCP stream, so the session treats it as
    a lost connection (reconnect), never as a reason to stop."""


class TCPFramer:
    """Splits a byte stream into length-prefixed packets."""

    __slots__ = ("_buf", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add stream bytes; return every packet completed by them.

        A zero length or one above `max_frame` can never be resynchronised on a stream, so it
        raises FramingError and the connection must be dropped.
        """
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            length = (buf[pos] << 8) | buf[pos + 1]
            if length < MIN_FRAME or length > self.max_frame:
                raise FramingError(f"invalid TCP frame length {length}")
            if n - pos - 2 < length:
                break
            out.append(bytes(buf[pos + 2 : pos + 2 + length]))
            pos += 2 + length
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes buffered towards an incomplete frame."""
        return len(self._buf)


def frame_packets(packets: Iterable[bytes]) -> bytes:
    """Concatenate packets with their length prefixes, ready for one `send_all`."""
    out = bytearray()
    for p in packets:
        n = len(p)
        if n < MIN_FRAME or n > MAX_FRAME:
            raise ValueError(f"cannot frame a packet of {n} bytes")
        out += n.to_bytes(2, "big")
        out += p
    return bytes(out)
