"""Sliding replay window shared by the data channel and tls-auth/tls-crypt wrapping.

OpenVPN's rule (packet_id.c, `--replay-window 64 15`): id 0 is never valid; an id above the
highest seen is accepted; an id up to `size` below the highest is accepted once, and only
if it is not older than `time_backtrack` seconds relative to a higher id already seen.
"""

from __future__ import annotations

DEFAULT_SEQ_BACKTRACK = 64
DEFAULT_TIME_BACKTRACK = 15.0


class ReplayWindow:
    """A bitmap window over packet ids; `check_and_update` is the only mutating call."""

    __slots__ = ("size", "time_backtrack", "highest", "_bits", "_highest_time")

    def __init__(
        self, size: int = DEFAULT_SEQ_BACKTRACK, time_backtrack: float = DEFAULT_TIME_BACKTRACK
    ) -> None:
        self.size = size
        self.time_backtrack = time_backtrack
        self.highest = 0
        self._bits = 0  # bit i set => id (highest - i) was seen
        self._highest_time = 0.0

    def check(self, packet_id: int, now: float) -> bool:
        """Would `packet_id` be accepted? Does not change the window."""
        if packet_id <= 0:
            return False
        if packet_id > self.highest:
            return True
        diff = self.highest - packet_id
        if diff >= self.size:
            return False
        if now - self._highest_time > self.time_backtrack:
            return False
        return not (self._bits >> diff) & 1

    def update(self, packet_id: int, now: float) -> None:
        """Record `packet_id` as seen; call only after authenticating the packet."""
        if packet_id > self.highest:
            shift = packet_id - self.highest
            self._bits = ((self._bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.highest = packet_id
            self._highest_time = now
        else:
            self._bits |= 1 << (self.highest - packet_id)

    def check_and_update(self, packet_id: int, now: float) -> bool:
        """Accept-once test: True (and recorded) if fresh, False if replayed or too old."""
        if not self.check(packet_id, now):
            return False
        self.update(packet_id, now)
        return True
