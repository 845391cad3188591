"""A raw management-protocol client for tests: send lines, read replies and notifications."""

from __future__ import annotations

import trio


class RawManagement:
    """Lines in, lines out; every wait is bounded by the caller's fail_after."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        #: every line read so far (replies and `>` notifications), in order
        self.seen: list[str] = []

    @classmethod
    async def unix(cls, path: str) -> RawManagement:
        return cls(await trio.open_unix_socket(path))

    async def line(self) -> str:
        while b"\r\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            assert chunk, f"management closed; seen {self.seen[-20:]}"
            self.buffer += chunk
        end = self.buffer.index(b"\r\n")
        text = self.buffer[:end].decode()
        del self.buffer[: end + 2]
        self.seen.append(text)
        return text

    async def until(self, predicate: object, limit: int = 2000) -> str:
        """Read lines until one satisfies `predicate` (a prefix string or a callable)."""
        for _ in range(limit):
            text = await self.line()
            if (predicate(text) if callable(predicate) else text.startswith(str(predicate))):
                return text
        raise AssertionError(f"not seen among {limit} lines: {predicate!r}")

    async def send(self, command: str) -> None:
        await self.stream.send_all(command.encode() + b"\n")

    async def command(self, command: str) -> list[str]:
        """A command's reply: one SUCCESS/ERROR line, or lines up to END (notifications skipped)."""
        await self.send(command)
        lines: list[str] = []
        while True:
            text = await self.line()
            if text.startswith(">"):
                continue
            if not lines and text.startswith(("SUCCESS:", "ERROR:")):
                return [text]
            if text == "END":
                return lines
            lines.append(text)
