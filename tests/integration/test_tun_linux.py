"""Kernel TUN + rtnetlink configuration (trivpn.tun.netconfig), exercised inside a private network namespace.

The root tests create `tvtun-<random>`, put a veth "uplink" with default routes in it, and run
this file as a script inside the namespace (`ip netns exec NS python THIS_FILE scenario`),
because a process cannot move itself into a namespace from Python 3.11 without ctypes. The
script prints one JSON document with `ip -j` snapshots; the assertions happen here.

The first few tests need no root: they drive LinuxTun over a SOCK_SEQPACKET socketpair
(which keeps packet boundaries like a TUN fd) and check error mapping and validation.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from helpers.require import require_root

from trivpn.errors import ConfigError
from trivpn.tun.base import TunDevice
from trivpn.tun.ip import build_echo_request, parse_echo_reply
from trivpn.tun.linux import LinuxTun, TunPermissionError, open_tun
from trivpn.tun.netconfig import NetConfigurator
from trivpn.tun.tunplan import TunConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
#: for this file run as a script: trivpn, and tests/ for `helpers`
SCRIPT_PATH = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])
SCRIPT_TIMEOUT = 30.0
SMALL_SNDBUF = 4096  # the kernel doubles it; larger SEQPACKET messages fail with EMSGSIZE


# --------------------------------------------------------------------------------------------
# No root needed
# --------------------------------------------------------------------------------------------


@pytest.fixture
def seqpacket_tun() -> Any:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SNDBUF)
    tun = LinuxTun(ours.detach(), "fake0", mtu=1500, max_batch=4)
    try:
        yield tun, theirs
    finally:
        tun.close()
        theirs.close()


async def test_linux_tun_reads_in_batches(seqpacket_tun: Any) -> None:
    tun, peer = seqpacket_tun
    assert isinstance(tun, TunDevice)
    packets = [bytes([0x45, i]) * 10 for i in range(6)]
    for p in packets:
        peer.send(p)
    with trio.fail_after(2):
        first = await tun.read_batch()
        second = await tun.read_batch()
    assert first == packets[:4]  # capped at max_batch
    assert second == packets[4:]
    assert tun.stats.packets_read == 6
    assert tun.stats.bytes_read == sum(map(len, packets))


async def test_linux_tun_read_waits_for_data(seqpacket_tun: Any) -> None:
    tun, peer = seqpacket_tun
    got: list[list[bytes]] = []

    async def reader() -> None:
        got.append(await tun.read_batch())

    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            peer.send(b"\x45hello")
    assert got == [[b"\x45hello"]]


async def test_linux_tun_write_and_drop(seqpacket_tun: Any) -> None:
    tun, peer = seqpacket_tun
    # SEQPACKET refuses messages above its send buffer with EMSGSIZE: like a TUN's EINVAL.
    huge = b"\x45" * (4 * SMALL_SNDBUF)
    with trio.fail_after(2):
        await tun.write_batch([b"\x45one", b"", huge, b"\x45" * 70000, b"\x45two"])
    assert peer.recv(100) == b"\x45one"
    assert peer.recv(100) == b"\x45two"
    assert tun.stats.packets_written == 2
    assert tun.stats.bytes_written == 8
    assert tun.stats.dropped_oversize == 2  # empty and > 65535
    assert tun.stats.dropped_errors == 1


async def test_linux_tun_write_waits_when_full(seqpacket_tun: Any) -> None:
    tun, peer = seqpacket_tun
    packet = b"\x45" * 1000
    count = 400  # well beyond what the socket buffers hold, so EAGAIN must happen
    received = 0

    async def drain() -> None:
        nonlocal received
        peer.setblocking(False)
        while received < count:
            await trio.lowlevel.wait_readable(peer)
            try:
                while True:
                    assert peer.recv(2000) == packet
                    received += 1
            except BlockingIOError:
                pass

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            await tun.write_batch([packet] * count)
    assert received == count
    assert tun.stats.packets_written == count
    assert tun.stats.dropped_errors == 0


async def test_linux_tun_close_wakes_reader_and_refuses_writes(seqpacket_tun: Any) -> None:
    tun, _peer = seqpacket_tun
    result: list[list[bytes]] = []

    async def reader() -> None:
        result.append(await tun.read_batch())

    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            tun.close()
    assert result == [[]]
    assert await tun.read_batch() == []
    with pytest.raises(trio.ClosedResourceError):
        await tun.write_batch([b"\x45x"])
    tun.close()  # idempotent


def test_open_tun_permission_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def deny(*_args: Any) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("trivpn.tun.linux.os.open", deny)
    with pytest.raises(TunPermissionError, match="needs root .*trivpn ping"):
        open_tun()


def test_open_tun_ioctl_eperm_is_permission_error(monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    os.close(w)
    monkeypatch.setattr("trivpn.tun.linux.os.open", lambda *_a: r)

    def eperm(*_args: Any) -> bytes:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr("trivpn.tun.linux.fcntl.ioctl", eperm)
    with pytest.raises(TunPermissionError):
        open_tun("tvpn%d")
    with pytest.raises(OSError):  # open_tun closed the fd on failure
        os.fstat(r)


@pytest.mark.parametrize("name", ["", "x" * 16, "a/b"])
def test_open_tun_rejects_bad_names(name: str) -> None:
    with pytest.raises(ConfigError):
        open_tun(name)


@pytest.mark.parametrize(
    "cfg",
    [
        TunConfig(mtu=20),
        TunConfig(mtu=1200, ipv6=("fd00::1", 64)),
        TunConfig(ipv4=("10.0.0.300", 24, None)),
        TunConfig(ipv4=("fd00::1", 24, None)),
        TunConfig(ipv4=("10.0.0.1", 33, None)),
        TunConfig(ipv6=("10.0.0.1", 64)),
        TunConfig(routes=[("10.0.0.0/33", None, None)]),
        TunConfig(routes=[("10.0.0.0/8", "fd00::1", None)]),
        TunConfig(routes6=[("10.0.0.0/8", None, None)]),
        TunConfig(routes=[("10.0.0.0/8", None, -1)]),
        TunConfig(redirect_gateway=True, server_addresses=["vpn.example.com"]),
    ],
)
def test_netconfig_validates_before_touching_anything(cfg: TunConfig) -> None:
    # The interface does not exist: a validation error must come first, as a ConfigError.
    with pytest.raises(ConfigError) as info:
        NetConfigurator("tvpn-nonexistent").apply(cfg)
    assert "does not exist" not in str(info.value)
    assert "\n" not in str(info.value)


def test_netconfig_undo_without_apply_is_a_noop() -> None:
    cfg = NetConfigurator("tvpn-nonexistent")
    cfg.undo()
    cfg.undo()
    assert cfg.applied == []


# --------------------------------------------------------------------------------------------
# Root: real TUN in a private namespace
# --------------------------------------------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns() -> Any:
    require_root("TUN integration test")  # fails under CI=true, skips loudly otherwise
    name = f"tvtun-{secrets.token_hex(4)}"
    _ip("netns", "add", name)
    try:
        # An "uplink": veth with v4/v6 default routes, so the server host route has a path.
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "link", "add", "up0", "type", "veth", "peer", "name", "up1")
        _ip("-n", name, "link", "set", "up0", "up")
        _ip("-n", name, "link", "set", "up1", "up")
        _ip("-n", name, "addr", "add", "192.0.2.2/24", "dev", "up0")
        _ip("-n", name, "-6", "addr", "add", "2001:db8:1::2/64", "dev", "up0", "nodad")
        _ip("-n", name, "route", "add", "default", "via", "192.0.2.1", "dev", "up0")
        _ip("-n", name, "-6", "route", "add", "default", "via", "2001:db8:1::1", "dev", "up0")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def _run_inside(ns: str, scenario: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=SCRIPT_PATH)
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, __file__, scenario],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        env=env,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, f"in-namespace script failed:\n{proc.stderr}"
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _addrs(snapshot: list[dict[str, Any]], ifname: str) -> set[str]:
    out = set()
    for link in snapshot:
        if link["ifname"] != ifname:
            continue
        for a in link.get("addr_info", []):
            if a.get("scope") == "link":
                continue
            text = f"{a['local']}/{a['prefixlen']}"
            if "address" in a and a["address"] != a["local"]:
                text += f" peer {a['address']}"
            out.add(text)
    return out


def _routes(snapshot: list[dict[str, Any]]) -> set[str]:
    out = set()
    for r in snapshot:
        text = r["dst"]
        if "gateway" in r:
            text += f" via {r['gateway']}"
        text += f" dev {r['dev']}"
        if "metric" in r and r["metric"] not in (0, 1024, 256):
            text += f" metric {r['metric']}"
        out.add(text)
    return out


@pytest.mark.root
def test_tun_configure_io_and_cleanup(netns: str) -> None:
    res = _run_inside(netns, "full")
    tun = res["tun"]
    assert tun.startswith("tvpn")

    # -- subnet + v6 + routes + redirect-gateway applied
    a = res["applied"]
    link = next(x for x in a["links"] if x["ifname"] == tun)
    assert link["mtu"] == 1400
    assert "UP" in link["flags"]
    assert _addrs(a["addrs"], tun) == {"10.77.0.2/24", "fd00:77::2/64"}
    v4 = _routes(a["routes4"])
    assert {
        "10.9.0.0/16 dev " + tun + " metric 5",
        "10.10.0.0/16 via 10.77.0.1 dev " + tun,
        "0.0.0.0/1 dev " + tun,
        "128.0.0.0/1 dev " + tun,
        "198.51.100.7 via 192.0.2.1 dev up0",
        "default via 192.0.2.1 dev up0",
    } <= v4
    v6 = _routes(a["routes6"])
    assert {
        "fd00:99::/64 dev " + tun,
        "::/1 dev " + tun,
        "8000::/1 dev " + tun,
        "2001:db8:5::7 via 2001:db8:1::1 dev up0 metric 1",  # OpenVPN's metric (issue 13)
        "default via 2001:db8:1::1 dev up0",
    } <= v6

    # -- the kernel answered our echo requests through the TUN
    assert res["ping4"] == {"src": "10.77.0.2", "dst": "10.77.0.1", "seq": 1, "payload": "v4"}
    assert res["ping6"] == {"src": "fd00:77::2", "dst": "fd00:77::1", "seq": 2, "payload": "v6"}

    # -- undo with the fd still open: the interface stays, everything we added is gone
    u = res["undone"]
    link = next(x for x in u["links"] if x["ifname"] == tun)
    assert link["mtu"] == 1500
    assert "UP" not in link["flags"]
    assert _addrs(u["addrs"], tun) == set()
    assert not any(tun in r or "198.51.100.7" in r for r in _routes(u["routes4"]))
    assert not any(tun in r or "2001:db8:5::7" in r for r in _routes(u["routes6"]))
    assert "default via 192.0.2.1 dev up0" in _routes(u["routes4"])
    assert "default via 2001:db8:1::1 dev up0" in _routes(u["routes6"])
    assert res["undo_warnings"] == []

    # -- net30: local address with a peer
    n = res["net30"]
    assert _addrs(n["addrs"], tun) == {"10.78.0.6/32 peer 10.78.0.5"}
    assert {
        "10.11.0.0/16 via 10.78.0.5 dev " + tun,
        "0.0.0.0/1 dev " + tun,
        "198.51.100.7 via 192.0.2.1 dev up0",
    } <= _routes(n["routes4"])
    assert res["ping_net30"] == {"src": "10.78.0.6", "dst": "10.78.0.5", "seq": 3, "payload": "p2p"}

    # -- close first, then undo: no interface, no server route, no warnings, uplink intact
    c = res["closed"]
    assert all(x["ifname"] != tun for x in c["links"])
    assert "up0" in {x["ifname"] for x in c["links"]}
    v4 = _routes(c["routes4"])
    assert not any(tun in r or "198.51.100.7" in r or "/1 " in r for r in v4)
    assert "default via 192.0.2.1 dev up0" in v4
    assert res["close_undo_warnings"] == []


@pytest.mark.root
def test_existing_route_is_not_ours_to_remove(netns: str) -> None:
    res = _run_inside(netns, "preexisting")
    # A server host route that existed before apply() is left in place by undo().
    assert "198.51.100.7 via 192.0.2.1 dev up0" in _routes(res["after"])
    assert res["applied"] == [
        "tvpn mtu",
        "route 0.0.0.0/1 (redirect)",
        "route 128.0.0.0/1 (redirect)",
    ]


# --------------------------------------------------------------------------------------------
# In-namespace script (runs as root inside the test's namespace)
# --------------------------------------------------------------------------------------------


def _ipj(*args: str) -> Any:
    out = subprocess.run(["ip", "-j", *args], check=True, capture_output=True, timeout=10)
    return json.loads(out.stdout or b"[]")


def _snapshot() -> dict[str, Any]:
    return {
        "links": _ipj("link"),
        "addrs": _ipj("addr"),
        "routes4": _ipj("-4", "route"),
        "routes6": _ipj("-6", "route"),
    }


async def _ping(tun: LinuxTun, src: str, dst: str, seq: int, payload: bytes) -> dict[str, Any]:
    """Send an echo request *from* `src` (a pretend remote) to our own address `dst`."""
    await tun.write_batch([build_echo_request(src, dst, 0x7151, seq, payload)])
    with trio.fail_after(3):
        while True:
            for packet in await tun.read_batch():
                reply = parse_echo_reply(packet)
                if reply is not None and reply.seq == seq:
                    assert reply.ident == 0x7151
                    return {
                        "src": reply.src,
                        "dst": reply.dst,
                        "seq": reply.seq,
                        "payload": reply.payload.decode(),
                    }


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _scenario_full() -> dict[str, Any]:
    warnings = _Warnings()
    logging.getLogger("trivpn").addHandler(warnings)
    out: dict[str, Any] = {}
    fd, name = open_tun()
    out["tun"] = name
    tun = LinuxTun(fd, name, mtu=1400)
    conf = NetConfigurator(name)
    try:
        conf.apply(
            TunConfig(
                mtu=1400,
                ipv4=("10.77.0.2", 24, None),
                ipv6=("fd00:77::2", 64),
                routes=[("10.9.0.0/16", None, 5), ("10.10.0.0/16", "10.77.0.1", None)],
                routes6=[("fd00:99::/64", None, None)],
                redirect_gateway=True,
                redirect_gateway6=True,
                server_addresses=["198.51.100.7", "2001:db8:5::7"],
            )
        )
        out["applied"] = _snapshot()
        out["ping4"] = trio.run(_ping, tun, "10.77.0.1", "10.77.0.2", 1, b"v4")
        out["ping6"] = trio.run(_ping, tun, "fd00:77::1", "fd00:77::2", 2, b"v6")
        warnings.messages.clear()
        conf.undo()
        out["undo_warnings"] = list(warnings.messages)
        out["undone"] = _snapshot()

        conf.apply(
            TunConfig(
                ipv4=("10.78.0.6", 32, "10.78.0.5"),
                routes=[("10.11.0.0/16", "10.78.0.5", None)],
                redirect_gateway=True,
                server_addresses=["198.51.100.7"],
            )
        )
        out["net30"] = _snapshot()
        out["ping_net30"] = trio.run(_ping, tun, "10.78.0.5", "10.78.0.6", 3, b"p2p")
        warnings.messages.clear()
    finally:
        tun.close()
        conf.undo()
    out["close_undo_warnings"] = list(warnings.messages)
    out["closed"] = _snapshot()
    return out


def _scenario_preexisting() -> dict[str, Any]:
    subprocess.run(
        ["ip", "route", "add", "198.51.100.7", "via", "192.0.2.1", "dev", "up0"],
        check=True,
        timeout=10,
    )
    fd, name = open_tun()
    conf = NetConfigurator(name)
    try:
        conf.apply(TunConfig(redirect_gateway=True, server_addresses=["198.51.100.7"]))
        applied = [label.replace(name, "tvpn").split(" 1500")[0] for label in conf.applied]
    finally:
        os.close(fd)
        conf.undo()
    return {"applied": applied, "after": _ipj("-4", "route")}


if __name__ == "__main__":
    scenarios = {"full": _scenario_full, "preexisting": _scenario_preexisting}
    print(json.dumps(scenarios[sys.argv[1]]()))
