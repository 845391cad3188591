"""trivpn against the real openvpn 2.6 server over a lossy, hostile link.

The impairment relay (`python -m trivpn.testing.relay`) runs inside the client namespace on
127.0.0.1:1194 and forwards to the server's veth address, so the client profile simply
points at 127.0.0.1. Its seeds are fixed: a datagram's fate depends only on the seed and
its position in its direction (see trivpn/testing/relay.py), so these runs meet the same
impairments every time. The nftables case uses the kernel's `numgen random` instead, which
is not seeded, so it gets more pings and a longer connect window.
"""

from __future__ import annotations

import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from trivpn.testing.netns import Netns
from trivpn.testing.ovpn_server import ServerOptions, client_profile

pytestmark = pytest.mark.root

TARGET = "10.202.0.1"
#: Bounds (not assertions): the relay's own lifetime, and how long one ping run may take.
RELAY_LIFETIME = 120
PING_TIMEOUT = 100
#: Seeds chosen so the impairments hit the handshake itself (not only the pings) without
#: dropping the first resets several times in a row, which would cost 2+4+8 s of backoff.
LOSS_SEED = 0
ATTACK_SEED = 0


@dataclass(slots=True)
class RelayRun:
    proc: subprocess.Popen[str]
    output: str = ""

    def counters(self, direction: str) -> dict[str, int]:
        """The relay's exit counters for "up" or "down" (after it has stopped)."""
        line = next(ln for ln in self.output.splitlines() if ln.startswith("relay counters:"))
        part = next(p for p in line.split(":", 1)[1].split(";") if p.strip().startswith(direction))
        return {k: int(v) for v, k in ((m[1], m[0]) for m in re.findall(r"(\w+) (\d+)", part))}


@contextmanager
def relay(ns: Netns, upstream: str, *args: str) -> Iterator[RelayRun]:
    """Run the relay in `ns` on 127.0.0.1:1194 → `upstream`:1194; stop it on exit."""
    proc = ns.popen(
        [sys.executable, "-m", "trivpn.testing.relay", "--listen", "127.0.0.1:1194",
         "--upstream", f"{upstream}:1194", "--lifetime", str(RELAY_LIFETIME), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    run = RelayRun(proc)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        first = proc.stdout.readline() if ready else ""
        assert first.startswith("relay listening"), f"relay did not start: {first!r}"
        yield run
    finally:
        proc.terminate()
        try:
            run.output, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            run.output, _ = proc.communicate()


def _ping(ns: Netns, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return ns.run(
        [sys.executable, "-m", "trivpn", "ping", str(profile), TARGET, "--no-reconnect", *args],
        check=False, timeout=PING_TIMEOUT,
    )


def _received(out: str) -> int:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(2))


def _client_counters(out: str) -> dict[str, int]:
    """trivpn's exit `counters:` line as {"control unauthentic": n, "data replayed": n, ...}."""
    line = next(ln for ln in out.splitlines() if "counters:" in ln)
    found: dict[str, int] = {}
    for section in line.split(";"):
        kind = "control" if "dropped control" in section else "data" if "dropped data" in section else None
        if kind is None:
            continue
        for n, reason in re.findall(r"(\d+) ([a-z ]+?)(?=,|$)", section.split(":", 1)[1]):
            found[f"{kind} {reason.strip()}"] = int(n)
    return found


@pytest.fixture
def udp_setup(pki, netns, openvpn_server, tmp_path: Path):  # type: ignore[no-untyped-def]
    opts = ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM")
    openvpn_server(opts)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, "127.0.0.1"))
    return netns, profile


def test_tunnel_comes_up_through_loss_reordering_and_duplication(udp_setup) -> None:  # type: ignore[no-untyped-def]
    netns, profile = udp_setup
    with relay(netns.client, netns.server_v4, "--seed", str(LOSS_SEED),
               "--drop", "0.2", "--reorder", "0.1", "--duplicate", "0.05") as run:
        r = _ping(netns.client, profile, "-c", "5", "-i", "0.2", "--connect-timeout", "60")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out + run.output
    assert "tunnel up" in out and _received(out) >= 1
    for direction in ("up", "down"):
        c = run.counters(direction)
        assert c["dropped"] > 0 and c["received"] > 10, run.output  # the impairment was real


def test_tunnel_comes_up_through_nftables_random_loss(pki, netns, openvpn_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts = ServerOptions(proto="udp", wrap="tls-crypt")
    server = openvpn_server(opts)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, server.remote_host))
    # Loss on the *input* hook of each namespace: a drop on the output hook would make the
    # sender's send() fail with EPERM instead of losing the datagram silently on the way.
    for ns, match in ((netns.client, "udp sport 1194"), (netns.server, "udp dport 1194")):
        rules = (
            "table inet tvloss {\n"
            " chain rx { type filter hook input priority 0; policy accept;"
            f" {match} numgen random mod 100 < 20 counter drop; }}\n"
            "}\n"
        )
        ns.run(["nft", "-f", "-"], input=rules)
    # Not seeded: 8 pings (all lost with p = 0.36^8) and a window for 6 reset attempts.
    r = _ping(netns.client, profile, "-c", "8", "-i", "0.2", "--connect-timeout", "75")
    table = "".join(ns.run(["nft", "list", "table", "inet", "tvloss"]).stdout
                    for ns in (netns.client, netns.server))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "tunnel up" in out and _received(out) >= 1
    dropped = [int(n) for n in re.findall(r"counter packets (\d+)", table)]
    assert len(dropped) == 2 and sum(dropped) > 0, table


def test_tunnel_survives_forged_truncated_replayed_and_garbage_datagrams(udp_setup) -> None:  # type: ignore[no-untyped-def]
    netns, profile = udp_setup
    attack = "corrupt=0.2,truncate=0.2,replay=0.2,garbage=0.2"
    with relay(netns.client, netns.server_v4, "--seed", str(ATTACK_SEED), "--down", attack, "--copies") as run:
        r = _ping(netns.client, profile, "-c", "20", "-i", "0.2", "--connect-timeout", "60")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out + run.output
    assert out.count("tunnel up") == 1, out  # came up once and stayed up
    assert _received(out) >= 16, out
    assert "Traceback" not in out
    down = run.counters("down")
    injected = down["corrupted"] + down["truncated"] + down["replayed"] + down["injected"]
    assert down["corrupted"] and down["truncated"] and down["replayed"] and down["injected"], run.output
    drops = _client_counters(out)
    assert drops["data replayed"] > 0, drops
    assert drops["control unauthentic"] + drops["data unauthentic"] > 0, drops
    assert drops["control malformed"] + drops["data malformed"] > 0, drops
    # Every forgery is refused somewhere; a replayed control packet may instead be absorbed
    # as a duplicate by the reliable layer, hence "most", not "all".
    assert injected // 2 <= sum(drops.values()) <= injected, (drops, run.output)


def test_tcp_stream_split_into_small_writes_and_stalled(pki, netns, openvpn_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts = ServerOptions(proto="tcp", wrap="tls-auth")
    openvpn_server(opts)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, "127.0.0.1"))
    start = time.monotonic()
    with relay(netns.client, netns.server_v4, "--tcp", "--seed", "1", "--split", "0.5",
               "--stall", "0.1", "--stall-time", "0.5") as run:
        r = _ping(netns.client, profile, "-c", "5", "-i", "0.2", "--connect-timeout", "60")
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{out}{run.output}\n({time.monotonic() - start:.1f} s)"
    assert _received(out) == 5, out
    line = next(ln for ln in run.output.splitlines() if ln.startswith("relay counters:"))
    splits = int(re.search(r"splits (\d+)", line).group(1))  # type: ignore[union-attr]
    assert splits > 0, line
