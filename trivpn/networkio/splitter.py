"""Bulk deframing of a TCP stream for the data-plane thread: receive in place, split in one pass.

Why not `framing.TCPFramer`: it appends every `recv` result to its buffer (a copy) and cuts
each packet out through a bytearray slice and `bytes()` (two more copies), one Python call
chain per chunk. On a download that is tens of thousands of packets a second. Here the
socket writes straight into the splitter's own buffer (`recv_into(space())`), `commit(n)`
walks the new bytes once, copies each complete packet out exactly once, and sorts it on the
spot into data packets (for the data plane) and everything else (for the packet muxer), so
the caller never walks the list again.

Theory of operation. The buffer holds `capacity` bytes of free space plus room for one
largest frame: after every `commit` the incomplete tail (at most 2 + max_frame - 1 bytes) is
moved to the front, so `space()` is never smaller than `capacity`. Lengths are checked the
moment both prefix bytes are present, exactly like `TCPFramer`: a zero length or one above
`max_frame` raises the same `FramingError` after the same bytes (the packets of that chunk
are lost with the connection, as with the reference framer), and the stream is unusable
from then on. Pure: no socket, no clock.
"""

from __future__ import annotations

from trivpn.networkio.framing import MAX_FRAME, MIN_FRAME, FramingError
from trivpn.wire import DATA_OPCODES, P_OPCODE_SHIFT

#: Free space offered to each `recv_into` (about 180 full-size packets).
DEFAULT_CAPACITY = 256 * 1024

__all__ = ["DEFAULT_CAPACITY", "FrameSplitter"]


class FrameSplitter:
    """Splits a length-prefixed packet stream into (data packets, other packets)."""

    __slots__ = ("_buf", "_view", "_end", "_broken", "max_frame")

    def __init__(self, capacity: int = DEFAULT_CAPACITY, max_frame: int = MAX_FRAME) -> None:
        if capacity < 1 or not MIN_FRAME <= max_frame <= MAX_FRAME:
            raise ValueError("capacity must be positive and max_frame within 1..65535")
        self.max_frame = max_frame
        self._buf = bytearray(capacity + 2 + max_frame)
        self._view = memoryview(self._buf)
        self._end = 0  # bytes of an incomplete frame at the front
        self._broken = False

    @property
    def pending(self) -> int:
        """Bytes buffered towards an incomplete frame."""
        return self._end

    def space(self) -> memoryview:
        """Where the next received bytes go (at least `capacity` bytes)."""
        return self._view[self._end :]

    def commit(self, n: int) -> tuple[list[bytes], list[bytes]]:
        """`n` bytes were written into `space()`: return the data packets and the other
        packets they completed, each list in stream order."""
        if self._broken:
            raise FramingError("the TCP stream was already found corrupt")
        end = self._end + n
        if n < 0 or end > len(self._buf):
            raise ValueError("commit beyond the space handed out")
        buf = self._buf
        view = self._view
        max_frame = self.max_frame
        data_ops = DATA_OPCODES
        data: list[bytes] = []
        other: list[bytes] = []
        pos = 0
        while end - pos >= 2:
            length = (buf[pos] << 8) | buf[pos + 1]
            if length < MIN_FRAME or length > max_frame:
                self._broken = True
                raise FramingError(f"invalid TCP frame length {length}")
            stop = pos + 2 + length
            if stop > end:
                break
            (data if buf[pos + 2] >> P_OPCODE_SHIFT in data_ops else other).append(bytes(view[pos + 2 : stop]))
            pos = stop
        if pos:
            rest = end - pos
            if rest:
                buf[:rest] = view[pos:end].tobytes()
            end = rest
        self._end = end
        return data, other

    def feed(self, chunk: bytes | bytearray | memoryview) -> tuple[list[bytes], list[bytes]]:
        """Copy `chunk` in and commit it (tests and callers without `recv_into`)."""
        data: list[bytes] = []
        other: list[bytes] = []
        src = memoryview(chunk).cast("B")
        while src:
            space = self.space()
            k = min(len(space), len(src))
            space[:k] = src[:k]
            d, o = self.commit(k)
            data += d
            other += o
            src = src[k:]
        return data, other
