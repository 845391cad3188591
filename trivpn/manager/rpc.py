"""Sans-IO RPC core: message decoding, msg_id / response_to matching, the Stop-last rule.

Theory of operation
-------------------
Every envelope (``ManagerMessage`` / ``TunnelMessage``) carries an ``RPC`` with ``msg_id``
and ``response_to``; 0 means "none". Each side numbers its *own* requests from 1, so the
two numberings never meet: an incoming message with ``response_to != 0`` is a response to
one of ours, anything else with ``msg_id != 0`` is a request from the peer, and the rest is
one-way (logs, pushed peer updates).

:class:`RPCCore` keeps the table of requests awaiting a response. A response whose id is
not in the table (never sent, already answered, or given up by a cancelled caller) is
reported as :class:`UnknownResponse` for the service to drop and log. A request naming a
message type we do not know (a newer peer) is reported with ``kind=None``; the service
answers it with an empty reply, as the reference does.

Decoding is strict about what cannot be a message: bytes that are not protobuf, and a
message that is neither a response nor carries any payload (no known type and no unknown
fields either), raise :class:`RemoteProtocolError`; the service then hangs up.

The tunnel's reply to Stop is the last frame it may send: once :meth:`RPCCore.encode` has
produced it, every later encode raises :class:`LocalProtocolError` and ``finished`` is set,
so the service can close its side of the stream right after writing it.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from google.protobuf.message import DecodeError

from trivpn.errors import LocalProtocolError, RemoteProtocolError
from trivpn.manager import manager_pb2 as pb
from trivpn.manager.framing import ROLES, encode_frame
from trivpn.records import dataclass

__all__ = [
    "Notice",
    "RPCCore",
    "Request",
    "Response",
    "UnknownResponse",
    "decode_message",
    "incoming_class",
    "outgoing_class",
]

#: What each role sends; it receives the other one.
_OUTGOING: dict[str, Any] = {"manager": pb.ManagerMessage, "tunnel": pb.TunnelMessage}


def outgoing_class(role: str) -> Any:
    return _OUTGOING[role]


def incoming_class(role: str) -> Any:
    return _OUTGOING["tunnel" if role == "manager" else "manager"]


def decode_message(payload: bytes, cls: Any) -> Any:
    """Parse one frame's payload as `cls`; RemoteProtocolError for anything unusable."""
    msg = cls()
    try:
        msg.ParseFromString(payload)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise RemoteProtocolError(f"corrupt {cls.DESCRIPTOR.name}: {exc}") from None
    if msg.WhichOneof("msg") is None and not msg.rpc.response_to:
        rest = cls()
        rest.CopyFrom(msg)
        rest.ClearField("rpc")
        if rest.ByteSize() == 0:  # no unknown fields either: there is nothing in it
            raise RemoteProtocolError(f"{cls.DESCRIPTOR.name} has no payload")
    return msg


@dataclass(slots=True)
class Response:
    """A response to our request `response_to` (kind None: the peer did not know it)."""

    response_to: int
    kind: str | None
    message: Any


@dataclass(slots=True)
class Request:
    """A request from the peer that must be answered with `response_to=msg_id`."""

    msg_id: int
    kind: str | None
    message: Any


@dataclass(slots=True)
class Notice:
    """A one-way message (no answer expected)."""

    kind: str | None
    message: Any


@dataclass(slots=True)
class UnknownResponse:
    """A response to nothing we are waiting for; drop it (and log)."""

    response_to: int
    kind: str | None


Event = Response | Request | Notice | UnknownResponse


@dataclass(slots=True)
class RPCCore:
    """Request numbering and matching for one side of one stream."""

    role: str
    next_msg_id: int = 1
    pending: set[int] = field(default_factory=set)
    finished: bool = False

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise LocalProtocolError(f"unknown role {self.role!r}")

    def new_request(self, msg: Any) -> int:
        """Number `msg` as our next request and start waiting for its response."""
        msg_id = self.next_msg_id
        self.next_msg_id += 1
        msg.rpc.msg_id = msg_id
        msg.rpc.response_to = 0
        self.pending.add(msg_id)
        return msg_id

    def forget(self, msg_id: int) -> None:
        """Stop waiting for `msg_id` (the caller gave up); a late response becomes unknown."""
        self.pending.discard(msg_id)

    def close(self) -> list[int]:
        """The stream ended: every request still waiting fails. Returns their ids."""
        failed = sorted(self.pending)
        self.pending.clear()
        return failed

    @staticmethod
    def make_reply(request_msg_id: int, msg: Any) -> Any:
        if request_msg_id == 0:
            raise LocalProtocolError("cannot reply to a one-way message")
        msg.rpc.msg_id = 0
        msg.rpc.response_to = request_msg_id
        return msg

    def receive(self, msg: Any) -> Event:
        """Classify one decoded incoming message."""
        kind = msg.WhichOneof("msg")
        rpc = msg.rpc
        if rpc.response_to:
            if rpc.response_to in self.pending:
                self.pending.discard(rpc.response_to)
                return Response(rpc.response_to, kind, msg)
            return UnknownResponse(rpc.response_to, kind)
        if rpc.msg_id:
            return Request(rpc.msg_id, kind, msg)
        return Notice(kind, msg)

    def encode(self, msg: Any) -> bytes:
        """Frame one outgoing message; enforces that the tunnel's Stop reply is the last."""
        if self.finished:
            raise LocalProtocolError("the stream is finished: Stop was answered")
        if not isinstance(msg, _OUTGOING[self.role]):
            raise LocalProtocolError(f"a {self.role} sends {_OUTGOING[self.role].DESCRIPTOR.name}")
        frame = encode_frame(msg.SerializeToString())
        if self.role == "tunnel" and msg.WhichOneof("msg") == "stop" and msg.rpc.response_to:
            self.finished = True
        return frame
