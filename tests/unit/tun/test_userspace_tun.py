"""UserspaceTun: batching in both directions, backpressure/drop rules and close semantics."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trivpn.errors import LocalProtocolError
from trivpn.tun.base import TunDevice
from trivpn.tun.ip import build_echo_request
from trivpn.tun.userspace import UserspaceTun


def pkt(i: int, size: int = 40) -> bytes:
    return bytes([0x45, i & 0xFF]) + bytes(size - 2)


def test_satisfies_the_tun_protocol() -> None:
    assert isinstance(UserspaceTun(), TunDevice)


async def test_read_batch_collects_everything_queued_up_to_max_batch() -> None:
    tun = UserspaceTun(max_batch=3)
    for i in range(5):
        await tun.send(pkt(i))
    with trio.fail_after(1):
        assert await tun.read_batch() == [pkt(0), pkt(1), pkt(2)]
        assert await tun.read_batch() == [pkt(3), pkt(4)]
    assert tun.stats.packets_read == 5
    assert tun.stats.bytes_read == 200


async def test_read_batch_waits_for_the_first_packet() -> None:
    tun = UserspaceTun()
    got: list[list[bytes]] = []

    async def engine() -> None:
        got.append(await tun.read_batch())

    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            await tun.send(pkt(1))
    assert got == [[pkt(1)]]


async def test_write_batch_reaches_the_application_in_order() -> None:
    tun = UserspaceTun()
    packets = [pkt(i) for i in range(10)]
    await tun.write_batch(packets)
    with trio.fail_after(1):
        received = [await tun.receive() for _ in range(10)]
    assert received == packets
    assert tun.stats.packets_written == 10
    assert tun.stats.bytes_written == 400


async def test_write_batch_drops_when_application_is_slow_instead_of_blocking() -> None:
    tun = UserspaceTun(queue_size=4)
    with trio.fail_after(1):
        await tun.write_batch([pkt(i) for i in range(6)])
    assert tun.stats.packets_written == 4
    assert tun.stats.dropped_full == 2
    assert [await tun.receive() for _ in range(4)] == [pkt(i) for i in range(4)]


async def test_write_batch_drops_empty_and_oversize() -> None:
    tun = UserspaceTun()
    await tun.write_batch([b"", pkt(1), b"\x45" * 70000])
    assert tun.stats.dropped_oversize == 2
    assert await tun.receive() == pkt(1)


async def test_send_applies_backpressure_when_engine_is_slow() -> None:
    tun = UserspaceTun(queue_size=2)
    sent = 0

    async def app() -> None:
        nonlocal sent
        for i in range(3):
            await tun.send(pkt(i))
            sent += 1

    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(app)
            await trio.testing.wait_all_tasks_blocked()
            assert sent == 2  # third send is waiting for room
            # Freeing room hands the blocked sender's packet over within the same batch.
            assert await tun.read_batch() == [pkt(0), pkt(1), pkt(2)]
        assert sent == 3


async def test_send_rejects_packets_that_do_not_fit() -> None:
    tun = UserspaceTun(mtu=100)
    with pytest.raises(LocalProtocolError):
        await tun.send(b"")
    with pytest.raises(LocalProtocolError):
        await tun.send(b"\x45" * 101)
    await tun.send(b"\x45" * 100)


async def test_close_wakes_engine_reader_with_eof() -> None:
    tun = UserspaceTun()
    got: list[list[bytes]] = []

    async def engine() -> None:
        got.append(await tun.read_batch())

    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine)
            await trio.testing.wait_all_tasks_blocked()
            tun.close()
    assert got == [[]]
    assert tun.closed


async def test_close_discards_pending_outbound_and_refuses_new_io() -> None:
    tun = UserspaceTun()
    await tun.send(pkt(1))
    tun.close()
    tun.close()  # idempotent
    assert await tun.read_batch() == []
    with pytest.raises(trio.ClosedResourceError):
        await tun.write_batch([pkt(2)])
    with pytest.raises(trio.ClosedResourceError):
        await tun.send(pkt(3))


async def test_close_lets_application_drain_then_end() -> None:
    tun = UserspaceTun()
    await tun.write_batch([pkt(1), pkt(2)])
    tun.close()
    assert [p async for p in tun] == [pkt(1), pkt(2)]
    with pytest.raises(trio.EndOfChannel):
        await tun.receive()


async def test_close_wakes_blocked_application_receive_and_send() -> None:
    tun = UserspaceTun(queue_size=1)
    await tun.send(pkt(0))  # fills the outbound queue so the next send blocks
    outcomes: list[str] = []

    async def receiver() -> None:
        try:
            await tun.receive()
        except trio.EndOfChannel:
            outcomes.append("receive: end")

    async def sender() -> None:
        try:
            await tun.send(pkt(1))
        except trio.ClosedResourceError:
            outcomes.append("send: closed")

    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            tun.close()
    assert sorted(outcomes) == ["receive: end", "send: closed"]


async def test_ping_shaped_round_trip() -> None:
    """The app sends an echo request; a fake engine loops it back as a batch."""
    tun = UserspaceTun()
    request = build_echo_request("10.8.0.2", "10.8.0.1", 1, 1, b"x")
    with trio.fail_after(1):
        await tun.send(request)
        batch = await tun.read_batch()
        await tun.write_batch(batch)
        assert await tun.receive() == request
