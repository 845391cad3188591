"""Write the seed corpora of the harnesses whose inputs trivpn itself produces.

    python fuzz/make_corpus.py            # (re)writes fuzz/corpus/<harness>/gen-*.bin
    python fuzz/make_corpus.py --check    # exit 1 if the committed files differ

Why generated and not captured: these inputs are real frames of trivpn's own encoders, and
the data-packet seeds must be sealed with the harness's own key (`KEY2`) to get past
authentication, which no live capture is. Everything here is deterministic (fixed keys,
randoms and CBC IVs), so rerunning gives the same bytes.

* fuzz_manager_frames: header lines and frames of every message each role sends, framed by
  `RPCCore.encode`, cut into streams as the fuzzer's mode byte expects.
* fuzz_reverse_frames: what crossed the wire while `bound_pair` set up a session, then what
  a bound client and a bound relay send each other, for each of the harness's modes.
* fuzz_reverse_routing: a synthetic ClientHello (whole, in two records, another domain) and
  HTTP request heads, as the harness's mode byte expects.
* fuzz_data_packet: wire packets sealed with `KEY2` by `DataChannel` (AEAD) or by
  `CBCDirection` with fixed IVs (CBC), including pings, OCC EXIT and every compression
  framing; and, for sealed mode, the decrypted plaintexts of such packets.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from trivpn.datachannel.cbc import make_cbc_directions
from trivpn.datachannel.core import Compression, DataChannel
from trivpn.manager import manager_pb2 as pb
from trivpn.manager.convert import network_settings_request
from trivpn.manager.framing import format_header
from trivpn.manager.rpc import RPCCore
from trivpn.manager.speaker import CURRENT_VERSIONS
from trivpn.manager.tunnel import log_message
from trivpn.reverse.frames import ErrorCode
from trivpn.tun.ip import build_echo_request
from trivpn.tun.netconfig import TunConfig

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"
SEP = b"\xff\xfe"  # fuzz_data_packet's packet separator


def _harness(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"make_corpus_{name}", FUZZ_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- manager ---------------------------------------------------------------------------


def manager_seeds() -> dict[str, bytes]:
    tunnel, manager = RPCCore("tunnel"), RPCCore("manager")
    start = pb.ManagerMessage(start=pb.StartRequest(
        tunnel_file_descriptor=3, profile_text="client\nremote 192.0.2.1 1194 udp\n",
        username="user", key_derivation="auto", tunnel_name="tvpn0"))
    manager.new_request(start)
    settings = pb.TunnelMessage(network_settings=network_settings_request(
        TunConfig(mtu=1500, ipv4=("10.8.0.6", 24, None), ipv6=("fd00::1000", 64),
                  routes=[("192.168.10.0/24", "10.8.0.1", None)], redirect_gateway=True,
                  server_addresses=["192.0.2.1"]),
        remote="192.0.2.1:1194 (udp4)", dns_servers=["10.8.0.1"], dns_domains=["vpn.test"]))
    tunnel.new_request(settings)
    record = logging.LogRecord("trivpn.workers", logging.INFO, __file__, 1,
                               "tunnel up: %s", ("10.8.0.6/24",), None)
    record.created = 1_700_000_000.0  # deterministic bytes
    peer = pb.Peer(name="192.0.2.1", state=pb.Peer.CONNECTED, remote="192.0.2.1:1194 (udp4)",
                   ip_addrs=["10.8.0.6/24"], tx_bytes=1234, rx_bytes=5678,
                   cipher="AES-256-GCM", key_derivation="tls-ekm")
    get_update = pb.ManagerMessage(get_peer_update=pb.GetPeerUpdate())
    manager.new_request(get_update)
    stop = pb.ManagerMessage(stop=pb.StopRequest())
    manager.new_request(stop)
    from_manager = [
        manager.encode(start),
        manager.encode(RPCCore.make_reply(1, pb.ManagerMessage(
            network_settings=pb.NetworkSettingsResponse(success=True)))),
        manager.encode(get_update),
        manager.encode(stop),
    ]
    from_tunnel = [
        tunnel.encode(log_message(record)),
        tunnel.encode(settings),
        tunnel.encode(RPCCore.make_reply(2, pb.TunnelMessage(peer_update=pb.PeerUpdate(
            upserted_peers=[peer])))),
        tunnel.encode(pb.TunnelMessage(peer_update=pb.PeerUpdate(upserted_peers=[peer]))),
        tunnel.encode(RPCCore.make_reply(1, pb.TunnelMessage(start=pb.StartResponse(success=True)))),
        tunnel.encode(RPCCore.make_reply(3, pb.TunnelMessage(stop=pb.StopResponse(success=True)))),
    ]
    manager_hdr = format_header("manager", CURRENT_VERSIONS)
    tunnel_hdr = format_header("tunnel", CURRENT_VERSIONS)
    # Mode byte: bit 0 = a header line comes first; bits 1-5 = feed step - 1.
    return {
        "gen-manager-stream.bin": b"\x01" + manager_hdr + b"".join(from_manager),
        "gen-tunnel-stream.bin": b"\x01" + tunnel_hdr + b"".join(from_tunnel),
        "gen-tunnel-frames-step7.bin": b"\x0c" + b"".join(from_tunnel),
        "gen-network-settings.bin": b"\x00" + from_tunnel[1],
        "gen-start.bin": b"\x3e" + from_manager[0],
    }


# -- reverse ---------------------------------------------------------------------------


def reverse_seeds() -> dict[str, bytes]:
    h = _harness("fuzz_reverse_frames")
    record: list[tuple[str, bytes]] = []
    relay, client = h.bound_pair(record)
    up = b"".join(d for direction, d in record if direction == "up")
    down = b"".join(d for direction, d in record if direction == "down")
    # what a bound client sends: accept the stream, data, FIN, a ping, a reset, GOAWAY
    client.accept_stream(1)
    client.send_data(1, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    client.send_fin(1, 0.0)
    client.consumed(1, 0)
    client.handle_timer(client.get_timer())
    client_flight = b"".join(client.data_to_send(0.0))
    client.close("bye", ErrorCode.NORMAL)
    client_bye = b"".join(client.data_to_send(0.0))
    # what a bound relay sends: data on stream 1, a second stream, a window update, RST
    relay.send_data(1, b"GET / HTTP/1.1\r\nhost: example.test\r\n\r\n")
    sid = relay.open_stream("198.51.100.7:40000", 0.0)
    relay.send_data(sid, b"x" * 3000)
    relay.reset_stream(sid, ErrorCode.REFUSED)
    relay.handle_timer(relay.get_timer())
    relay_flight = b"".join(relay.data_to_send(0.0))
    relay.close("maintenance", ErrorCode.NORMAL)
    relay_bye = b"".join(relay.data_to_send(0.0))
    # Mode byte: bits 0-1 = mode (0 decoder, 1 fresh relay, 2 bound relay, 3 bound client),
    # bits 2-7 = where the body is cut in two.
    return {
        "gen-decoder-up.bin": bytes([0x00]) + up,
        "gen-decoder-down.bin": bytes([0x04 * 5]) + down,
        "gen-fresh-relay-handshake.bin": bytes([0x01 | 0x04 * 9]) + up,
        "gen-bound-relay-from-client.bin": bytes([0x02 | 0x04 * 13]) + client_flight + client_bye,
        "gen-bound-client-from-relay.bin": bytes([0x03 | 0x04 * 30]) + relay_flight + relay_bye,
    }


# -- data packets ----------------------------------------------------------------------


def _opened(h: ModuleType, cipher: str, auth: str | None, wire: bytes) -> bytes:
    """The plaintext of a packet we just sealed (the reference opener must agree)."""
    opened = h.ref_open(cipher, auth, wire)
    assert opened is not None, f"{cipher}: the reference opener refused our own packet"
    return bytes(opened[1])


def data_packet_seeds() -> dict[str, bytes]:
    h = _harness("fuzz_data_packet")
    key2: bytes = h.KEY2
    ip4 = build_echo_request("10.8.0.6", "10.8.0.1", 0x1234, 1, b"trivpn fuzz seed")
    ip6 = build_echo_request("fd00::1000", "fd00::1", 0x1234, 2, b"trivpn fuzz seed")
    escaped = b"\x50" + ip4[1:]  # starts like the stub-v2 indicator: must be escaped
    out: dict[str, bytes] = {}

    def aead_wires(variant: int, comp: Compression, v1: bool) -> list[bytes]:
        ch = DataChannel(cipher=h.AEAD_VARIANTS[variant][0], peer_id=None if v1 else 0,
                         compression=comp, ping_interval=10.0)
        ch.install_key(0, key2, 0.0)
        wires = ch.encrypt([ip4, ip6, escaped], 0.0)
        wires += ch.packets_to_send(20.0)
        wires.append(ch.exit_packet(21.0))
        return wires

    def cbc_wires(variant: int, comp: Compression, v1: bool) -> list[bytes]:
        cipher, auth = h.CBC_VARIANTS[variant]
        enc, _ = make_cbc_directions(key2, cipher, auth, is_server=False)
        header = b"\x30" if v1 else b"\x48\x00\x00\x00"
        # the framed plaintexts, as an AEAD channel with this framing seals them
        plain = [_opened(h, "AES-256-GCM", None, w) for w in aead_wires(0, comp, v1)]
        return [header + enc.seal(pid, p, bytes([pid]) * 16) for pid, p in enumerate(plain, 1)]

    cases: list[tuple[str, int, Callable[[int, Compression, bool], list[bytes]]]] = [
        ("aes256gcm", 0, aead_wires), ("aes128gcm", 1, aead_wires), ("chacha", 2, aead_wires),
        ("cbc-aes256-sha256", 0, cbc_wires), ("cbc-aes256-sha1", 1, cbc_wires),
        ("cbc-aes256-sha512", 2, cbc_wires),
    ]
    for i, (label, variant, make) in enumerate(cases):
        comp = list(Compression)[i % 4]
        v1 = i % 2 == 1
        family = h.CBC if make is cbc_wires else 0
        mode = list(Compression).index(comp) | variant << 2 | family | (h.V1 if v1 else 0)
        wires = make(variant, comp, v1)
        cipher, auth = (h.CBC_VARIANTS if family else h.AEAD_VARIANTS)[variant]
        plain = [_opened(h, cipher, auth, w) for w in wires]
        assert all(SEP not in w for w in wires + plain), f"{label}: separator inside a packet"
        name = f"{label}-{comp.value}-{'v1' if v1 else 'v2'}"
        # wire mode: the packets, a replayed copy of the first, and a forged copy
        forged = wires[0][:-1] + bytes([wires[0][-1] ^ 1])
        out[f"gen-wire-{name}.bin"] = bytes([mode]) + SEP.join([*wires, wires[0], forged])
        # sealed mode: the same packets' plaintexts (framing included)
        out[f"gen-sealed-{name}.bin"] = bytes([mode | h.SEALED]) + SEP.join(plain)
    return out


GENERATORS: dict[str, Callable[[], dict[str, bytes]]] = {
    "fuzz_manager_frames": manager_seeds,
    "fuzz_reverse_frames": reverse_seeds,
    "fuzz_data_packet": data_packet_seeds,
    "fuzz_reverse_routing": lambda: _harness("fuzz_reverse_routing").corpus(),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python fuzz/make_corpus.py", description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="only compare with the committed files")
    args = p.parse_args(argv)
    stale = []
    for harness, generate in GENERATORS.items():
        folder = CORPUS_DIR / harness
        for name, data in generate().items():
            path = folder / name
            if args.check:
                if not path.is_file() or path.read_bytes() != data:
                    stale.append(str(path.relative_to(FUZZ_DIR.parent)))
                continue
            folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            print(f"wrote {path.relative_to(FUZZ_DIR.parent)} ({len(data)} bytes)")
    if stale:
        print("stale or missing (run python fuzz/make_corpus.py):\n  " + "\n  ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
