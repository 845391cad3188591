"""One session's figures, read from its stack: what `trivpn status`, the status file and the
metrics show. Pure reads of counters the layers already keep; nothing here does IO.

Bytes and packets are the data channel's (plaintext IP payload of authenticated packets,
pings and OCC messages not counted), the same figures the server's status report uses;
OpenVPN's link counters include the protocol overhead and control packets, so theirs are a
little higher. Drops are every counter the packet muxer and the data channel keep, by reason.
"""

from __future__ import annotations

from dataclasses import asdict, field
from typing import Any

from trivpn.records import dataclass
from trivpn.session.stack import SessionStack

__all__ = ["KeyClock", "SessionFigures", "current_key_id", "drops_of", "figures_of"]


@dataclass(frozen=True, slots=True)
class SessionFigures:
    """A snapshot of one session (a client's own, or one of a server's clients)."""

    remote: str
    cipher: str
    key_id: int | None
    key_age: float | None  # seconds since the current key came into use
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int
    drops: dict[str, int]
    last_handshake: float | None  # wall-clock time the current key came into use
    handshake_seconds: float | None  # how long the first key exchange took
    renegotiations: int
    local_ipv4: str = ""
    local_ipv6: str = ""
    common_name: str = ""
    client_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class KeyClock:
    """When the session's current key came into use, seen by watching the key id.

    The key schedule keeps no clock of its own for this. The monitors observe the key when
    the session comes up (the first handshake's time, not the first read's) and at every
    read (status, the status file, a metrics scrape), which places a renegotiation at the
    first read after it.
    """

    def __init__(self) -> None:
        self.key_id: int | None = None
        self.since: float | None = None

    def observe(self, key_id: int | None, wall: float) -> None:
        if key_id != self.key_id:
            self.key_id = key_id
            self.since = wall if key_id is not None else None


def current_key_id(stack: SessionStack) -> int | None:
    """The key id the session's data channel sends with now (None before the first key)."""
    schedule = getattr(stack.tls, "schedule", None)
    key_id = getattr(schedule, "primary", None)
    return key_id if isinstance(key_id, int) else None


def drops_of(stack: SessionStack) -> dict[str, int]:
    """Every dropped-packet counter of the muxer and the data channel, by reason."""
    m = stack.muxer.stats
    drops = {
        "control_unauthentic": m.drop_unauthentic,
        "control_malformed": m.drop_malformed,
        "control_wrong_session": m.drop_session,
        "control_early": m.drop_early,
        "control_unsupported": m.drop_unsupported,
    }
    d = stack.data.stats()
    if d is not None:
        drops.update(
            data_unauthentic=d.drop_auth,
            data_replayed=d.drop_replay,
            data_malformed=d.drop_malformed,
            data_unknown_key=d.drop_no_key,
            data_bad_framing=d.drop_compression,
        )
    return drops


def figures_of(
    stack: SessionStack, clock: KeyClock, wall: float, *, remote: str,
    handshake_seconds: float | None = None, **labels: Any,
) -> SessionFigures:
    """The figures of `stack` at wall-clock time `wall` (updates `clock` first)."""
    schedule = getattr(stack.tls, "schedule", None)
    key_id = current_key_id(stack)
    clock.observe(key_id, wall)
    d = stack.data.stats()
    return SessionFigures(
        remote=remote,
        cipher=getattr(schedule, "cipher", "") or "",
        key_id=key_id,
        key_age=None if clock.since is None else max(0.0, wall - clock.since),
        bytes_in=d.rx_bytes if d else 0,
        bytes_out=d.tx_bytes if d else 0,
        packets_in=d.rx_packets if d else 0,
        packets_out=d.tx_packets if d else 0,
        drops=drops_of(stack),
        last_handshake=clock.since,
        handshake_seconds=handshake_seconds,
        renegotiations=int(getattr(schedule, "renegotiations", 0)),
        **labels,
    )
