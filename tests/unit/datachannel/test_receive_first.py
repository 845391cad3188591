"""Receive early, send late: a key installed receive-only (`send_now=False`) opens packets at
once and is sealed with only after the peer proved it has it, or after `ActivateKey`.

The thread test runs the four directions of a client/server pair in four threads while the
main thread renegotiates the way a server does (receive-only install first, the client one
step later), with bounded counts and bounded joins.
"""

from __future__ import annotations

import queue
import threading

import pytest
import trio
import trio.testing

from trivpn.datachannel.core import DataChannel
from trivpn.datachannel.keys import PACKET_ID_WRAP_TRIGGER, DataConfig, KeyTable, make_key
from trivpn.datachannel.plane import TaskPlane
from trivpn.datachannel.service import DataService
from trivpn.messages import ActivateKey, InstallKey, KeyUsage, RetireKey, TLSToData
from trivpn.tlssession.keyschedule import next_key_id

KEYS = [bytes((i * 29 + k) & 0xFF for i in range(256)) for k in range(16)]
CIPHER = "AES-256-GCM"
JOIN = 30.0


def _pair(cipher: str = CIPHER, auth: str | None = None) -> tuple[DataChannel, DataChannel]:
    client = DataChannel(cipher=cipher, peer_id=3, auth=auth)
    server = DataChannel(cipher=cipher, peer_id=3, is_server=True, auth=auth)
    client.install_key(0, KEYS[0], 0.0)
    server.install_key(0, KEYS[0], 0.0)
    return client, server


def _ip(n: int, size: int = 40) -> bytes:
    return b"\x45" + n.to_bytes(4, "big") + bytes(size - 5)


def _roles(core: DataChannel) -> tuple[int | None, int | None, int | None]:
    """(primary, lame duck, pending) key ids."""
    return core.primary_key_id, core.lame_duck_key_id, core.pending_key_id


def _pid(wire: bytes) -> int:
    return int.from_bytes(wire[4:8], "big")  # V2 header (peer id set): the id follows


# -- the key table ------------------------------------------------------------------------


def test_key_table_pending_activation_and_retirement() -> None:
    cfg = DataConfig.build(cipher="AES-128-GCM")
    k0, k1, k2, k3 = (make_key(cfg, i, KEYS[i]) for i in range(4))
    t = KeyTable().installed(k0).installed(k1)  # primary 1, lame duck 0
    p = t.installed_pending(k2)  # the lame duck makes room: never three keys
    assert (p.primary, p.lame, p.pending) == (k1, None, k2)
    assert p.by_id[1] is k1 and p.by_id[2] is k2 and p.by_id[0] is None
    assert p.activated(1) is p and p.activated(3) is p  # stale activations change nothing
    a = p.activated(2)
    assert (a.primary, a.lame, a.pending) == (k2, k1, None)
    # a newer pending key activates the older one first (the sender may already use it)
    q = p.installed_pending(k3)
    assert (q.primary, q.lame, q.pending) == (k2, None, k3)
    # so does a sending install
    s = p.installed(k3)
    assert (s.primary, s.lame, s.pending) == (k3, k2, None)
    # retiring the primary while a key is pending: the pending key takes over
    r = p.retired(1)
    assert (r.primary, r.lame, r.pending) == (k2, None, None)
    assert p.retired(2) is p and p.retired(0) is p
    # without a primary, or with the primary's key id, a receive-only install just sends
    assert KeyTable().installed_pending(k0).primary is k0
    again = make_key(cfg, 1, KEYS[1])
    assert t.installed_pending(again).primary is again


# -- the switch, single-threaded ------------------------------------------------------------


def test_receive_only_install_switches_on_the_peers_first_packet() -> None:
    client, server = _pair()
    server.encrypt([_ip(1)], 0.0)
    server.install_key(1, KEYS[1], 1.0, send_now=False)
    assert (server.primary_key_id, server.pending_key_id, server.sending_key_id) == (0, 1, 0)
    assert server.lame_duck_key_id is None
    # until the client has the key, the server keeps sealing with key 0 (ids continue)
    old = server.encrypt([_ip(2)], 1.0)
    assert old[0][0] & 7 == 0 and _pid(old[0]) == 2
    assert client.decrypt(client.encrypt([], 1.0) + old, 1.0) == [_ip(2)]
    # key-0 packets from the client are no proof; the server still opens them
    assert server.decrypt(client.encrypt([_ip(3)], 1.0), 1.0) == [_ip(3)]
    assert server.sending_key_id == 0
    client.install_key(1, KEYS[1], 2.0)
    assert server.decrypt(client.encrypt([_ip(4)], 2.0), 2.0) == [_ip(4)]  # the proof
    assert server.sending_key_id == 1 and server.primary_key_id == 0  # the table is unchanged
    new = server.encrypt([_ip(5), _ip(6)], 3.0)
    assert [(w[0] & 7, _pid(w)) for w in new] == [(1, 1), (1, 2)]  # ids restart at 1
    assert client.decrypt(new, 3.0) == [_ip(5), _ip(6)]
    # usage reports the sending key; received traffic counts from the batch after the proof
    assert server.usage() == KeyUsage(1, bytes=80, packets=2)
    server.decrypt(client.encrypt([_ip(8, 50)], 3.0), 3.0)
    assert server.usage() == KeyUsage(1, bytes=130, packets=3)
    # ActivateKey afterwards only makes the table say so: no second restart of the ids
    server.activate_key(1)
    assert _roles(server) == (1, 0, None)
    assert _pid(server.encrypt([_ip(7)], 4.0)[0]) == 3
    assert server.stats.drop_no_key == client.stats.drop_no_key == 0


def test_a_keepalive_ping_is_proof_too_and_cbc_works_the_same() -> None:
    client, server = _pair("AES-256-CBC", auth="SHA256")
    server.install_key(1, KEYS[1], 1.0, send_now=False)
    client.install_key(1, KEYS[1], 1.0)
    assert server.decrypt(client.tx.pings(1, 1.0), 1.0) == []
    assert server.sending_key_id == 1
    wire = server.encrypt([_ip(1)], 2.0)
    assert wire[0][0] & 7 == 1 and client.decrypt(wire, 2.0) == [_ip(1)]


def test_activate_key_switches_a_silent_peer() -> None:
    client, server = _pair()
    server.install_key(1, KEYS[1], 1.0, send_now=False)
    client.install_key(1, KEYS[1], 1.0)  # the client has it but sends nothing
    server.activate_key(0)  # stale: not the pending key
    assert server.sending_key_id == 0
    server.activate_key(1)
    assert (server.primary_key_id, server.lame_duck_key_id, server.sending_key_id) == (1, 0, 1)
    wire = server.encrypt([_ip(1)], 2.0)
    assert (wire[0][0] & 7, _pid(wire[0])) == (1, 1)
    assert client.decrypt(wire, 2.0) == [_ip(1)]


def test_retire_and_reinstall_while_a_key_is_pending() -> None:
    client, server = _pair()
    server.install_key(1, KEYS[1], 1.0, send_now=False)
    old_in_flight = client.encrypt([_ip(1)], 1.0)  # key 0
    client.install_key(1, KEYS[1], 1.0)
    server.retire_key(1)  # stale: the pending key is not a lame duck
    assert (server.primary_key_id, server.pending_key_id) == (0, 1)
    # a second receive-only key before any proof: key 1 becomes the sending primary
    server.install_key(2, KEYS[2], 2.0, send_now=False)
    assert (server.primary_key_id, server.pending_key_id, server.sending_key_id) == (1, 2, 1)
    # the old primary (key 0) was dropped with the lame-duck slot: its late packets are lost
    assert server.decrypt(old_in_flight + client.encrypt([_ip(2)], 2.0), 2.0) == [_ip(2)]
    assert server.stats.drop_no_key == 1
    assert server.sending_key_id == 1  # key-1 packets prove nothing about key 2
    # the key schedule retires the old primary late: the pending key takes over
    server.retire_key(1)
    assert _roles(server) == (2, None, None)
    client.install_key(2, KEYS[2], 3.0)
    assert client.decrypt(server.encrypt([_ip(3)], 3.0), 3.0) == [_ip(3)]


def test_near_wrap_follows_the_sending_key() -> None:
    client, server = _pair()
    server.encrypt([_ip(1)], 0.0)
    server.tx._pid = PACKET_ID_WRAP_TRIGGER  # as if key 0 had sealed that many packets
    assert server.needs_renegotiation and server.usage().near_wrap
    server.install_key(1, KEYS[1], 1.0, send_now=False)
    assert server.needs_renegotiation  # still sealing with key 0
    client.install_key(1, KEYS[1], 1.0)
    server.decrypt(client.encrypt([_ip(2)], 1.0), 1.0)
    assert not server.needs_renegotiation and not server.usage().near_wrap


# -- the service: InstallKey(send_now=False) and ActivateKey on its control channel --------


async def test_service_installs_receive_only_and_activates() -> None:
    control_s, control_r = trio.open_memory_channel[list[TLSToData]](4)
    mux_s, mux_r = trio.open_memory_channel[list[bytes]](4)
    tun_up_s, tun_up_r = trio.open_memory_channel[list[bytes]](4)
    tun_down_s, tun_down_r = trio.open_memory_channel[list[bytes]](4)
    net_s, net_r = trio.open_memory_channel[list[bytes]](4)
    plane = TaskPlane(from_mux=mux_r, from_tun=tun_up_r, to_tun=tun_down_s, to_net=net_s)
    service = DataService(control=control_r, plane=plane, is_server=True, clock=trio.current_time)
    client = DataChannel(cipher=CIPHER, peer_id=1)
    client.install_key(0, KEYS[0], 0.0)

    def item(key_id: int, send_now: bool = True) -> InstallKey:
        return InstallKey(key_id, KEYS[key_id], CIPHER, 1, None, 0.0, send_now=send_now)

    async def key_ids_sent() -> list[int]:
        await tun_up_s.send([_ip(0)])
        return [w[0] & 7 for w in await net_r.receive()]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.run)
        await control_s.send([item(0), item(1, send_now=False)])
        await trio.testing.wait_all_tasks_blocked()
        assert await key_ids_sent() == [0]
        client.install_key(1, KEYS[1], 0.0)
        await mux_s.send(client.encrypt([_ip(1)], 0.0))  # the proof
        assert await tun_down_r.receive() == [_ip(1)]
        assert await key_ids_sent() == [1]
        await control_s.send([item(2, send_now=False), ActivateKey(2)])  # the silent case
        await trio.testing.wait_all_tasks_blocked()
        assert await key_ids_sent() == [2]
        await control_s.send([RetireKey(1)])
        await trio.testing.wait_all_tasks_blocked()
        core = service.core
        assert core is not None
        assert _roles(core) == (2, None, None)
        nursery.cancel_scope.cancel()


# -- four threads, server-style renegotiations ------------------------------------------------


class _Flow:
    """One direction in two threads: `core` seals batches until `stop` (at most `limit`),
    `peer` opens them; `opened` counts batches opened (for the main thread to wait on)."""

    def __init__(self, core: DataChannel, peer: DataChannel, base: int, stop: threading.Event,
                 errors: list[BaseException], limit: int = 20_000) -> None:
        self.core, self.peer, self.base, self.stop, self.errors = core, peer, base, stop, errors
        self.limit = limit
        self.q: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=8)
        self.wire: list[bytes] = []
        self.delivered: list[bytes] = []
        self.opened = 0
        self.cond = threading.Condition()

    def send(self) -> None:
        try:
            for b in range(self.limit):
                if self.stop.is_set():
                    break
                wires = self.core.tx.encrypt([_ip(self.base + b * 4 + i) for i in range(4)], 0.0)
                self.wire.extend(wires)
                self.q.put(wires, timeout=JOIN)
        except BaseException as exc:  # handed to the main thread
            self.errors.append(exc)
        finally:
            self.q.put(None, timeout=JOIN)

    def receive(self) -> None:
        try:
            for _ in range(self.limit + 1):
                wires = self.q.get(timeout=JOIN)
                if wires is None:
                    return
                self.delivered.extend(self.peer.rx.decrypt(wires, 0.0))
                with self.cond:
                    self.opened += 1
                    self.cond.notify_all()
        except BaseException as exc:
            self.errors.append(exc)

    def wait(self, batches: int) -> None:
        """Until `batches` more batches were opened (bounded)."""
        with self.cond:
            target = self.opened + batches
            assert self.cond.wait_for(lambda: self.opened >= target, timeout=JOIN)


def test_server_style_renegotiations_under_four_threads_lose_nothing() -> None:
    """The server installs each key receive-only, the client a moment later; the server
    switches on the client's proof (or, every third time, on ActivateKey once the client has
    it). Nothing the server seals is ever dropped for want of a key, and its packet ids run
    1, 2, 3, ... under each key, never going back to a key it left."""
    client, server = _pair()
    renegotiations = 9
    errors: list[BaseException] = []
    stop = threading.Event()
    down = _Flow(server, client, 0, stop, errors)
    up = _Flow(client, server, 1 << 20, stop, errors)
    threads = [threading.Thread(target=f) for f in (down.send, down.receive, up.send, up.receive)]
    for t in threads:
        t.start()
    ids = [0]
    for _ in range(renegotiations):
        ids.append(next_key_id(ids[-1]))  # 0, 1..7, 1, 2: key ids wrap
    proved = 0
    try:
        for n in range(1, renegotiations + 1):
            key_id = ids[n]
            down.wait(12)  # everything sealed with older keys has been opened
            server.install_key(key_id, KEYS[n], 0.0, send_now=False)  # fresh material
            down.wait(3)  # the server keeps sealing with its primary meanwhile
            client.install_key(key_id, KEYS[n], 0.0)
            if n % 3:  # the client's packets prove it has the key
                for _ in range(200):
                    if server.sending_key_id == key_id:
                        break
                    up.wait(1)
                proved += server.sending_key_id == key_id
            server.activate_key(key_id)  # the fallback (a no-op once proven)
        down.wait(12)  # batches sealed with the last key arrive too
    finally:
        stop.set()
        for t in threads:
            t.join(JOIN)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    at_client, at_server = client.stats, server.stats
    assert (at_client.drop_no_key, at_client.drop_auth, at_client.drop_replay) == (0, 0, 0)
    assert len(down.delivered) == len(set(down.delivered)) == len(down.wire)
    assert (at_server.drop_auth, at_server.drop_replay) == (0, 0)
    assert len(up.delivered) == len(set(up.delivered)) == at_server.rx_packets
    assert at_server.rx_packets + at_server.drop_no_key == len(up.wire)
    seen: list[int] = []
    expect = 0
    for w in down.wire:
        key_id = w[0] & 7
        if not seen or seen[-1] != key_id:  # a new run: a new key
            seen.append(key_id)
            expect = 0
        expect += 1
        assert _pid(w) == expect
    assert seen == ids  # each key in one run, in order: never back to a key it left
    assert proved == renegotiations - renegotiations // 3  # the client sends throughout


@pytest.mark.parametrize("proof", [True, False])
def test_pending_key_is_opened_before_it_sends(proof: bool) -> None:
    """The peer may seal with the new key the moment it has it: the receive-only key opens
    those packets whether or not they count as proof yet."""
    client, server = _pair()
    server.install_key(1, KEYS[1], 0.0, send_now=False)
    client.install_key(1, KEYS[1], 0.0)
    wires = client.encrypt([_ip(1)], 0.0) if proof else client.tx.exits(1, 0.0)
    server.decrypt(wires, 0.0)
    assert server.stats.drop_no_key == 0
    assert server.sending_key_id == 1  # an OCC message is authentic too
