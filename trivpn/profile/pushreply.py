"""PUSH_REPLY reassembly: one option list from replies joined by ``push-continuation``.

The server sends its settings as ``PUSH_REPLY,opt1,opt2,...``; options are separated
by commas (no escaping).  A long reply is split into several messages; all but the
last carry ``push-continuation 2`` and the last ``push-continuation 1`` (or none).
:class:`PushReplyAssembler` glues the parts together and drops the continuation
markers; :func:`trivpn.profile.push.parse_push_options` then reads the options.
Everything here is untrusted input: :class:`RemoteProtocolError` on anything malformed,
and the total size is bounded.
"""

from __future__ import annotations

from trivpn.errors import RemoteProtocolError

__all__ = ["MAX_PUSH_MESSAGES", "MAX_PUSH_OPTIONS", "PushReplyAssembler", "continuation_value"]

PUSH_REPLY_PREFIX = "PUSH_REPLY"
#: Our own bound on how many continued PUSH_REPLY messages we glue together.
MAX_PUSH_MESSAGES = 64
#: Our own bound on the number of options in one assembled reply.
MAX_PUSH_OPTIONS = 1024


class PushReplyAssembler:
    """Accumulates ``PUSH_REPLY`` messages joined by ``push-continuation``.

    Sans-IO: feed each control-channel message; get the whole option list back when
    the last part arrives.  After a complete reply the assembler starts afresh (a
    server may push again, e.g. a new auth-token on renegotiation).
    """

    __slots__ = ("_options", "_messages")

    def __init__(self) -> None:
        self._options: list[str] = []
        self._messages = 0

    @property
    def pending(self) -> bool:
        """True while a continued reply is incomplete."""
        return self._messages > 0

    def feed(self, message: str) -> list[str] | None:
        """Add one message; return the complete option list, or None if more follow."""
        msg = message.rstrip("\0")
        if msg != PUSH_REPLY_PREFIX and not msg.startswith(PUSH_REPLY_PREFIX + ","):
            raise RemoteProtocolError(f"not a PUSH_REPLY: {msg[:40]!r}")
        if not all(" " <= c <= "~" for c in msg):
            raise RemoteProtocolError("PUSH_REPLY contains non-printable characters")
        continuation: int | None = None
        parts: list[str] = []
        for item in msg[len(PUSH_REPLY_PREFIX) + 1 :].split(","):
            item = item.strip()
            if not item:
                continue
            if item.split(None, 1)[0] == "push-continuation":
                continuation = continuation_value(item)
                continue
            parts.append(item)
        self._messages += 1
        self._options.extend(parts)
        if self._messages > MAX_PUSH_MESSAGES or len(self._options) > MAX_PUSH_OPTIONS:
            self._reset()
            raise RemoteProtocolError(
                f"PUSH_REPLY too long (over {MAX_PUSH_MESSAGES} parts or {MAX_PUSH_OPTIONS} options)"
            )
        if continuation == 2:
            return None
        result = self._options
        self._reset()
        return result

    def _reset(self) -> None:
        self._options = []
        self._messages = 0


def continuation_value(item: str) -> int:
    """The value of a ``push-continuation`` option: 2 (more follow) or 1 (last)."""
    words = item.split()
    if len(words) != 2 or words[1] not in ("1", "2"):
        raise RemoteProtocolError(f"bad push-continuation: {item!r}")
    return int(words[1])
