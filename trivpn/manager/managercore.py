"""Sans-IO core of the manager role: Start and its answer, and what the tunnel sends.

Theory of operation
-------------------
:class:`ManagerCore` holds the manager role's protocol decisions; `trivpn.manager.session`
(the trio side) spawns the process, applies settings with rtnetlink, and moves messages.

:meth:`ManagerCore.start_message` builds the one Start we send; :meth:`check_start`
turns its outcome (the answer, or no answer within the bound) into a :class:`FatalError`
with one line, or accepts it. :meth:`check_peer_update` validates the answer to
GetPeerUpdate.

:meth:`ManagerCore.receive` maps each item from the tunnel to an action: a `Log` becomes a
:class:`RelayLog` (re-logged on "trivpn.tunnel" at the mapped level, with the tunnel's
logger name minus the leading "trivpn" and its extra fields); a `PeerUpdate`, pushed or as
a request, becomes :class:`NotePeerUpdate` (the latest peer is kept in ``peer``; a request
gets an empty reply); a `NetworkSettingsRequest` becomes :class:`ApplySettings`, whose
outcome :meth:`settings_answer` turns into the reply; any other request gets an empty reply
(:class:`EmptyReply`); any other one-way message is logged and ignored (None).
"""

from __future__ import annotations

import logging
from typing import Any

from trivpn.errors import FatalError, RemoteProtocolError, TrivpnError
from trivpn.manager import manager_pb2 as pb
from trivpn.manager.rpc import Notice, Request
from trivpn.records import dataclass

__all__ = [
    "ApplySettings",
    "EmptyReply",
    "ManagerAction",
    "ManagerCore",
    "NotePeerUpdate",
    "RelayLog",
]

log = logging.getLogger("trivpn.manager")

_PY_LEVEL = {
    pb.Log.DEBUG: logging.DEBUG,
    pb.Log.INFO: logging.INFO,
    pb.Log.WARN: logging.WARNING,
    pb.Log.ERROR: logging.ERROR,
    pb.Log.CRITICAL: logging.CRITICAL,
    pb.Log.FATAL: logging.CRITICAL,
}


def _printable(text: str) -> str:
    """`text` with every character that is not printable escaped (\\x1b, \\n, ...): the
    unprivileged tunnel's log text lands in the privileged manager's terminal and log file,
    where a newline would forge a line and an escape sequence would drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


@dataclass(slots=True)
class RelayLog:
    """Log `message` + `extra` at `level`, naming the tunnel's `logger`."""

    level: int
    message: str
    extra: str
    logger: str


@dataclass(slots=True)
class NotePeerUpdate:
    """Keep and offer `update`; when it came as `request`, answer it with an empty reply."""

    update: pb.PeerUpdate
    request: Request | None


@dataclass(slots=True)
class ApplySettings:
    """Apply `settings` on the TUN, then answer `request` with `settings_answer(...)`."""

    request: Request
    settings: pb.NetworkSettingsRequest


@dataclass(slots=True)
class EmptyReply:
    """A request we do not serve: answer it with an empty envelope."""

    request: Request


ManagerAction = RelayLog | NotePeerUpdate | ApplySettings | EmptyReply


class ManagerCore:
    """The manager role's decisions for one tunnel process."""

    def __init__(self) -> None:
        self.peer: pb.Peer | None = None  # the latest state the tunnel reported

    @staticmethod
    def start_message(
        *,
        tun_fd: int,
        profile_text: str,
        profile_path: str,
        username: str,
        password: str,
        key_derivation: str,
        tunnel_name: str,
    ) -> pb.ManagerMessage:
        start = pb.StartRequest(
            tunnel_file_descriptor=tun_fd,
            profile_text=profile_text,
            profile_path=profile_path,
            username=username,
            password=password,
            key_derivation=key_derivation,
            tunnel_name=tunnel_name,
        )
        return pb.ManagerMessage(start=start)

    @staticmethod
    def check_start(answer: Any, *, timed_out: bool, start_timeout: float) -> None:
        """Accept Start's outcome, or FatalError with one line."""
        if timed_out:
            raise FatalError(f"the tunnel did not come up within {start_timeout:g} s")
        if not answer.start.success:
            raise FatalError(answer.start.error_message or "the tunnel failed to start")

    @staticmethod
    def check_peer_update(answer: Any) -> pb.PeerUpdate:
        if answer.WhichOneof("msg") != "peer_update":
            raise RemoteProtocolError("GetPeerUpdate answered with something else")
        update: pb.PeerUpdate = answer.peer_update
        return update

    def receive(self, item: Request | Notice) -> ManagerAction | None:
        """What to do with one item from the tunnel (None: nothing)."""
        msg = item.message
        request = item if isinstance(item, Request) else None
        if item.kind == "log":
            entry = msg.log
            names = entry.logger_names
            logger = ".".join(names[1:]) if names[:1] == ["trivpn"] else ".".join(names)
            extra = "".join(f" [{f.name}={f.value}]" for f in entry.fields if f.name != "time")
            return RelayLog(
                _PY_LEVEL.get(entry.level, logging.INFO), _printable(entry.message),
                _printable(extra), _printable(logger),
            )
        if item.kind == "peer_update":
            for peer in msg.peer_update.upserted_peers:
                self.peer = peer
            return NotePeerUpdate(msg.peer_update, request)
        if item.kind == "network_settings" and request is not None:
            return ApplySettings(request, msg.network_settings)
        if request is not None:
            log.warning("unexpected request %s from the tunnel; empty reply", item.kind)
            return EmptyReply(request)
        log.warning("ignoring a one-way %s from the tunnel", item.kind)
        return None

    @staticmethod
    def settings_answer(error: TrivpnError | OSError | None) -> pb.ManagerMessage:
        """The reply to NetworkSettingsRequest once applying it succeeded or failed."""
        if error is None:
            answer = pb.NetworkSettingsResponse(success=True)
        elif isinstance(error, TrivpnError):
            log.error("network settings refused: %s", error)
            answer = pb.NetworkSettingsResponse(success=False, error_message=str(error))
        else:
            log.error("network settings failed: %s", error)
            answer = pb.NetworkSettingsResponse(success=False, error_message=f"{error.strerror or error}")
        return pb.ManagerMessage(network_settings=answer)
