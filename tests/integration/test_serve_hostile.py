"""Hostile input through a running `trivpn serve`, with Debian's openvpn 2.6 as the real client.

* 10,000 authentic-looking client resets (tls-crypt with the server's own key, random client
  session ids, each from a fresh random source port), twice, create no client state: the
  server's RSS (from /proc) grows by at most `RSS_BOUND_KB` over both floods (half that over
  the second), the status file lists no client; and while a third such flood runs, a real
  openvpn client still connects and pings both ways.
* Garbage, truncated, bit-flipped and replayed datagrams (replays of the real client's own
  packets, sent from its own address and port and from other ports) never end an
  established client's session: it keeps pinging, keeps its client id and real address.

The hostile traffic comes from tests/helpers/hostile.py, run inside the client namespace
against the server's address in the server namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.servens import (
    UP_TIMEOUT,
    openvpn_client,
    ping,
    stop_server,
    trivpn_serve,
    write_server_files,
)

from trivpn.testing.netns import Netns, NetnsPair
from trivpn.testing.ovpn_server import ServerOptions
from trivpn.testing.pki import PKI, common_name
from trivpn.testing.process import read_until, wait_until

pytestmark = pytest.mark.root

PORT = 1194
FLOOD = 10_000
#: How much the server's RSS may grow over two floods of FLOOD resets (no state: what is left
#: is allocator noise; one client session alone costs more than this).
RSS_BOUND_KB = 2048
OPTS = ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM", port=PORT)
TESTS_DIR = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    """The hostile helper runs as `python -m helpers.hostile` with this checkout's trivpn."""
    paths = [str(TESTS_DIR), str(TESTS_DIR.parent), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))


def _hostile(*args: str) -> list[str]:
    return [sys.executable, "-m", "helpers.hostile", *args]


def server_conf(pki: PKI, workdir: Path, status: Path, local: str) -> Path:
    write_server_files(pki, workdir)
    conf = workdir / "server.conf"
    conf.write_text("\n".join([
        f"port {PORT}", "proto udp", f"local {local}", "dev tun", "topology subnet",
        "server 10.8.0.0 255.255.255.0", "keepalive 10 60", "ca ca.crt", "cert server.crt",
        "key server.key", "dh none", "tls-crypt ta.key", "data-ciphers AES-256-GCM",
        f"status {status} 1", "status-version 2", "verb 3",
    ]) + "\n")
    return conf


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def udp_in(ns: Netns) -> tuple[int, int]:
    """(InDatagrams, RcvbufErrors) of the namespace's UDP stack."""
    rows = [ln.split() for ln in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines() if ln.startswith("Udp:")]
    values = dict(zip(rows[0][1:], rows[1][1:], strict=True))
    return int(values["InDatagrams"]), int(values["RcvbufErrors"])


def clients(status: Path) -> list[list[str]]:
    return [ln.split(",") for ln in status.read_text().splitlines() if ln.startswith("CLIENT_LIST,")]


def fresh_status(status: Path, after: float) -> list[list[str]]:
    """The status file's client rows once it has been rewritten after `after` (bounded)."""
    wait_until(lambda: status.exists() and status.stat().st_mtime > after, 5, f"{status} rewritten")
    return clients(status)


def test_reset_flood_creates_no_state_and_a_real_client_still_connects(
    netns: NetnsPair, pki: PKI, tmp_path: Path
) -> None:
    status = tmp_path / "status.log"
    conf = server_conf(pki, tmp_path, status, netns.server_v4)
    flood = _hostile("flood", netns.server_v4, str(PORT), str(FLOOD), str(tmp_path / "ta.key"))
    with trivpn_serve(netns.server, conf) as serve:
        wait_until(status.exists, 5, "the status file")
        rss = [rss_kb(serve.pid)]
        for _ in range(2):  # the second flood shows whether anything accumulates
            udp_before = udp_in(netns.server)
            r = netns.client.run(flood, timeout=180, env=_env())
            assert r.returncode == 0 and json.loads(r.stdout)["sent"] == FLOOD, r.stderr
            udp_after = udp_in(netns.server)
            received = udp_after[0] - udp_before[0]
            assert received >= FLOOD * 9 // 10, f"only {received} resets reached the server ({udp_after})"
            assert fresh_status(status, time.time()) == []
            rss.append(rss_kb(serve.pid))
        print(f"\nRSS of trivpn serve: {rss[0]} kB at rest, {rss[1]} kB after {FLOOD} resets, {rss[2]} kB "
              f"after {FLOOD} more ({received} of the last received, {udp_after[1] - udp_before[1]} "
              f"socket-buffer drops)")
        assert rss[2] - rss[0] <= RSS_BOUND_KB and rss[2] - rss[1] <= RSS_BOUND_KB // 2, rss
        # a third flood runs while the real client connects
        flooder = netns.client.popen(flood, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            with openvpn_client(netns.client, pki, netns.server_v4, tmp_path, "client", OPTS):
                read_until(serve, "ready:", UP_TIMEOUT)
                ping(netns.client, "10.8.0.1")
                ping(netns.server, "10.8.0.2")
                out, err = flooder.communicate(timeout=180)
                assert flooder.returncode == 0 and json.loads(out)["sent"] == FLOOD, err
                rows = fresh_status(status, time.time())
                assert [row[1] for row in rows] == [common_name(pki.client_cert)]
                rss_client = rss_kb(serve.pid)
                print(f"RSS with one real client after the third flood: {rss_client} kB")
        finally:
            if flooder.poll() is None:
                flooder.kill()
                flooder.wait(timeout=10)
        stop_server(serve)


def test_garbage_truncated_and_replayed_datagrams_never_drop_an_established_client(
    netns: NetnsPair, pki: PKI, tmp_path: Path
) -> None:
    status = tmp_path / "status.log"
    conf = server_conf(pki, tmp_path, status, netns.server_v4)
    with trivpn_serve(netns.server, conf) as serve, openvpn_client(
        netns.client, pki, netns.server_v4, tmp_path, "client", OPTS
    ) as log:
        read_until(serve, "ready:", UP_TIMEOUT)
        ping(netns.client, "10.8.0.1")
        (before,) = fresh_status(status, time.time())
        # the client keeps talking (and so gets captured) while the attack runs
        pinger = netns.client.popen(["ping", "-c", "60", "-i", "0.1", "-W", "2", "10.8.0.1"],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            r = netns.client.run(_hostile("attack", netns.server_v4, str(PORT), "veth0"),
                                 timeout=180, env=_env())
            assert r.returncode == 0, r.stderr
            sent = json.loads(r.stdout)
            out, _ = pinger.communicate(timeout=60)
        finally:
            if pinger.poll() is None:
                pinger.kill()
                pinger.wait(timeout=10)
        assert sent["captured"] >= 10 and sent["replayed"] >= 200, sent
        print(f"\nhostile datagrams sent: {sent}; ping during the attack: {out.splitlines()[-2]}")
        assert pinger.returncode == 0, out
        ping(netns.client, "10.8.0.1")
        ping(netns.server, "10.8.0.2")
        (after,) = fresh_status(status, time.time())
        # same session: same client id, peer id and real address (no float to a hostile port)
        assert (after[1], after[2], after[10], after[11]) == (before[1], before[2], before[10], before[11])
        text = log.read_text(errors="replace")
        assert "SIGUSR1" not in text and "Inactivity timeout" not in text, text[-3000:]
        stop_server(serve)
