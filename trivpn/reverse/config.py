"""Tunables of one reverse-tunnel session, shared by every sans-IO piece of it."""

from __future__ import annotations

from dataclasses import dataclass

from trivpn.errors import LocalProtocolError
from trivpn.reverse.frames import ABSOLUTE_MAX_FRAME, DEFAULT_MAX_FRAME, PRE_AUTH_MAX_FRAME

MAX_WINDOW = 2**31 - 1
MAX_STREAM_ID = 2**32 - 1


@dataclass(slots=True)
class SessionConfig:
    """Tunables; defaults fit a 1 Gbit/s × 20 ms path per stream and 64 MiB per session."""

    window: int = 2 * 1024 * 1024  # per-stream receive credit we grant
    session_buffer: int = 64 * 1024 * 1024  # cap on received-but-unconsumed bytes
    max_frame: int = DEFAULT_MAX_FRAME  # largest payload we accept after authentication
    chunk: int = 64 * 1024  # largest DATA payload we send
    burst: int = 256 * 1024  # bulk bytes per data_to_send() call, so control overtakes bulk
    send_buffer: int = 256 * 1024  # per-stream unsent bytes before the producer must wait
    heartbeat: float = 10.0  # relay's choice wins (sent in HELLO_ACK)
    missed_heartbeats: int = 3
    handshake_timeout: float = 5.0
    max_streams: int = 65536
    linger: float = 300.0
    control_buffer: int = 1024 * 1024  # queued control output before we stop reading the peer

    def check(self) -> None:
        if not 1024 <= self.window <= MAX_WINDOW:
            raise LocalProtocolError("window must be between 1 KiB and 2 GiB")
        if not PRE_AUTH_MAX_FRAME <= self.max_frame <= ABSOLUTE_MAX_FRAME:
            raise LocalProtocolError("max frame must be between 256 bytes and 64 MiB")
        if not 0.05 <= self.heartbeat <= 3600 or self.missed_heartbeats < 1:
            raise LocalProtocolError("heartbeat must be 0.05..3600 s, missed >= 1")
