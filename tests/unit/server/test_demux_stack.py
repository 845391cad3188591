"""The real client session stack against a server stack started by the demultiplexer.

The client's `SessionStack` (as `trivpn connect` runs it) talks over an in-memory link to a
tiny pump around `ServerDemux`: the stateless reply goes back on the link, `NewSession`
starts a server-role `SessionStack` whose muxer is `PacketMuxer.server_after_cookie`, and
`Deliver` feeds it. TLS, key method 2, push and data must all work as after a stateful
reset exchange.
"""

from __future__ import annotations

import random

import trio
import trio.testing

from trivpn.controlchannel.service import control_payload_size
from trivpn.controlchannel.wrap import ControlWrap, StaticKey, TLSAuth
from trivpn.messages import ClientReady
from trivpn.packetmuxer.core import PacketMuxer
from trivpn.server.demux import Deliver, NewSession, Reply, ServerDemux
from trivpn.session.stack import DATA_CHANNEL_SIZE, SessionStack
from trivpn.testing.pki import generate_pki
from trivpn.testing.twoended import (
    TwoEnded,
    TwoEndedConfig,
    make_packet,
    server_tls_factory,
)

ADDR = ("192.0.2.10", 51000)


async def test_client_stack_connects_through_the_cookie_handshake(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pki = generate_pki()
    te = TwoEnded(TwoEndedConfig(wrap="tls-auth"), pki, random.Random(3))
    key = StaticKey.from_text(pki.static_key)

    def factory(pid: int) -> ControlWrap:
        return TLSAuth(key, 0, timestamp=2, initial_packet_id=pid)

    demux = ServerDemux(factory, cookie_key=b"c" * 32)
    server_ready = trio.Event()
    stacks: list[SessionStack] = []
    tun_out_s, tun_out_r = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
    _tun_in_s, tun_in_r = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)

    async def watch(stack: SessionStack) -> None:
        async for ev in stack.events:
            if isinstance(ev, ClientReady):
                server_ready.set()

    async def serve(nursery: trio.Nursery) -> None:
        to_session: trio.MemorySendChannel[list[bytes]] | None = None
        async for batch in te.link.server.net_up:
            for action in demux.receive_datagrams([(b, ADDR) for b in batch], trio.current_time()):
                if isinstance(action, Reply):
                    await te.link.server.net_down.send([action.datagram])
                elif isinstance(action, NewSession):
                    assert to_session is None, "one client, one session"
                    to_session, from_demux = trio.open_memory_channel[list[bytes]](
                        DATA_CHANNEL_SIZE
                    )
                    stack = SessionStack(
                        is_server=True,
                        muxer=PacketMuxer.server_after_cookie(
                            action.wrap, action.local_session_id, action.remote_session_id
                        ),
                        make_tls=server_tls_factory(pki, wrap="tls-auth", wrap_key=key.data),
                        net_up=from_demux,
                        net_down=te.link.server.net_down.clone(),
                        payload_size=control_payload_size(action.wrap.overhead, ipv6=False),
                        tun_up=tun_in_r,
                        tun_down=tun_out_s,
                        clock=trio.current_time,
                    )
                    stacks.append(stack)
                    nursery.start_soon(stack.run)
                    nursery.start_soon(watch, stack)
                    await to_session.send([action.first_packet])
                elif isinstance(action, Deliver):
                    assert to_session is not None
                    await to_session.send(action.datagrams)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(te.link.run)
        nursery.start_soon(te._run_side, "client")
        nursery.start_soon(serve, nursery)
        with trio.fail_after(60):
            await te.wait_until(lambda: te.up["client"] is not None and server_ready.is_set(), 60)
            await te.send("client", [make_packet("client", 1)])
            got = await tun_out_r.receive()
        assert got == [make_packet("client", 1)]
        assert demux.stats.resets_answered >= 1 and demux.stats.sessions_created == 1
        assert demux.session_count == 1 and demux.session_info(0) == (0, ADDR)
        assert sum(demux.stats.drops.values()) == 0
        m = stacks[0].muxer.stats
        assert m.drop_unauthentic == m.drop_session == m.drop_malformed == 0
        nursery.cancel_scope.cancel()
