"""Tunables of one reverse-tunnel session, shared by every sans-IO piece of it."""

from __future__ import annotations

from trivpn.errors import LocalProtocolError
from trivpn.records import dataclass
from trivpn.reverse.frames import ABSOLUTE_MAX_FRAME, DEFAULT_MAX_FRAME, PRE_AUTH_MAX_FRAME

MAX_WINDOW = 2**31 - 1
MAX_STREAM_ID = 2**32 - 1


@dataclass(slots=True)
class SessionConfig:
    """Tunables; a stream's window grows to fit a 1 Gbit/s × 16 ms path, 16 MiB a session."""

    window: int = 2 * 1024 * 1024  # largest per-stream receive credit we grant
    #: credit a new stream starts with (announced in HELLO); it grows towards `window`
    #: as the application consumes, while the windows' growth fits half `session_buffer`
    initial_window: int = 64 * 1024
    session_buffer: int = 16 * 1024 * 1024  # hard cap on received-but-unconsumed bytes
    #: a stream whose received bytes nobody consumes for this long is reset (TIMEOUT)
    stall_timeout: float = 60.0
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

    @property
    def start_window(self) -> int:
        """The credit each new stream starts with."""
        return min(self.initial_window, self.window)

    def check(self) -> None:
        if not 1024 <= self.window <= MAX_WINDOW:
            raise LocalProtocolError("window must be between 1 KiB and 2 GiB")
        if not PRE_AUTH_MAX_FRAME <= self.max_frame <= ABSOLUTE_MAX_FRAME:
            raise LocalProtocolError("max frame must be between 256 bytes and 64 MiB")
        if not 0.05 <= self.heartbeat <= 3600 or self.missed_heartbeats < 1:
            raise LocalProtocolError("heartbeat must be 0.05..3600 s, missed >= 1")
        if not 1024 <= self.initial_window <= MAX_WINDOW:
            raise LocalProtocolError("initial window must be between 1 KiB and 2 GiB")
        if self.session_buffer < 2 * 1024 or self.stall_timeout <= 0:
            raise LocalProtocolError("session buffer must be >= 2 KiB, stall timeout > 0")
