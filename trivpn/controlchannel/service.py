"""The control-channel service: TLS bytes ⇄ reliable P_CONTROL_V1 messages.

It also carries renegotiation: an in-order P_CONTROL_SOFT_RESET_V1 goes up as `SoftReset`,
and a `SoftReset` coming down becomes our own soft-reset message for that key id.

Down, it cuts the TLS ciphertext into payloads that keep every control packet within
OpenVPN's control-channel MTU (a peer drops larger ones). Up, it hands the payloads of
in-order P_CONTROL_V1 messages to the TLS session of their key id.
"""

from __future__ import annotations

import logging

import trio

from trivpn.messages import (
    Ciphertext,
    ControlToReliable,
    ControlToTLS,
    DynamicWrapKey,
    ReliableMessage,
    ReliableToControl,
    ResetComplete,
    SoftReset,
    TLSToControl,
)
from trivpn.wire import (
    CONTROL_SEND_ACK_MAX,
    MESSAGE_ID_LEN,
    SESSION_ID_LEN,
    TLS_MTU_DEFAULT,
    Opcode,
)

log = logging.getLogger("trivpn.controlchannel")

__all__ = ["TLS_MTU_DEFAULT", "chunk_ciphertext", "control_payload_size", "run_controlchannel"]


def control_payload_size(wrap_overhead: int, *, ipv6: bool, tls_mtu: int = TLS_MTU_DEFAULT) -> int:
    """Largest TLS payload per control packet, computed the way OpenVPN sizes its own."""
    acks = 1 + MESSAGE_ID_LEN * CONTROL_SEND_ACK_MAX + SESSION_ID_LEN
    fixed = 1 + SESSION_ID_LEN + acks + MESSAGE_ID_LEN
    ip_overhead = 48 if ipv6 else 28
    return min(2048, tls_mtu) - fixed - wrap_overhead - ip_overhead


def chunk_ciphertext(key_id: int, data: bytes, size: int) -> list[ReliableMessage]:
    return [
        ReliableMessage(key_id, Opcode.CONTROL_V1, data[i : i + size])
        for i in range(0, len(data), size)
    ]


async def run_controlchannel(
    *,
    from_rel: trio.MemoryReceiveChannel[list[ReliableToControl]],
    to_rel: trio.MemorySendChannel[list[ControlToReliable]],
    to_tls: trio.MemorySendChannel[list[ControlToTLS]],
    from_tls: trio.MemoryReceiveChannel[list[TLSToControl]],
    payload_size: int,
) -> None:
    async def up() -> None:
        async with from_rel, to_tls:
            async for batch in from_rel:
                out: list[ControlToTLS] = []
                for item in batch:
                    if isinstance(item, ResetComplete):
                        out.append(item)
                    elif isinstance(item, ReliableMessage):
                        if item.opcode == Opcode.CONTROL_V1:
                            if item.payload:
                                out.append(Ciphertext(item.key_id, item.payload))
                        elif item.opcode == Opcode.CONTROL_SOFT_RESET_V1:
                            out.append(SoftReset(item.key_id))
                if out:
                    await to_tls.send(out)

    async with to_rel:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(up)
            async with from_tls:
                async for batch in from_tls:
                    msgs: list[ControlToReliable] = []
                    for item in batch:
                        if isinstance(item, DynamicWrapKey):
                            msgs.append(item)  # for the muxer
                        elif isinstance(item, SoftReset):
                            msgs.append(
                                ReliableMessage(item.key_id, Opcode.CONTROL_SOFT_RESET_V1, b"")
                            )
                        else:
                            msgs.extend(chunk_ciphertext(item.key_id, item.data, payload_size))
                    if msgs:
                        await to_rel.send(msgs)
            nursery.cancel_scope.cancel()
