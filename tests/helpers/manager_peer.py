"""A hand-written raw-bytes peer for the manager protocol tests (never a second Speaker,
so a bug shared by both ends cannot hide)."""

from __future__ import annotations

import struct

import trio


class RawPeer:
    """The far end of an in-memory stream, driven byte by byte."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def write(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError(f"EOF after {len(self.buf)} of {n} bytes")
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def read_line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("EOF before newline")
            self.buf += chunk
        line, _, rest = bytes(self.buf).partition(b"\n")
        self.buf[:] = rest
        return line + b"\n"

    async def read_frame(self, cls: type) -> object:
        (n,) = struct.unpack(">I", await self.read_exact(4))
        msg = cls()
        msg.ParseFromString(await self.read_exact(n))
        return msg

    async def expect_eof(self) -> None:
        assert not self.buf
        assert await self.stream.receive_some(65536) == b""


def frame(msg: object) -> bytes:
    body = msg.SerializeToString()  # type: ignore[attr-defined]
    return struct.pack(">I", len(body)) + body
