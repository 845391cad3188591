"""SIGHUP/SIGUSR1 stop a Server run by itself (the `trivpn.serve` API) gracefully; `trivpn
serve` restarts on them instead (test_serve_restart.py). Before, the default action killed
it at once (exit 129/138) with the leases unwritten, the clients untold and the management
socket left behind. A subprocess runs the real Server with its signal handling (rootless: a
userspace TUN) and a trivpn client connected on 127.0.0.1.

The same signals and SIGUSR2 during the start-up: in the set-up (in process, the TUN
factory raises them) and from `python -m trivpn serve`'s first line (a subprocess)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from helpers.profiles import shared_pki
from helpers.require import require_root
from helpers.serving import client_profile, ping, server_config

from trivpn import api
from trivpn.errors import SessionRestart
from trivpn.profile.profile import parse_profile
from trivpn.server.service import Server
from trivpn.tun.userspace import UserspaceTun

BOUND = 40
TESTS = Path(__file__).resolve().parents[2]
ROOT = TESTS.parent

#: the server as `trivpn serve` runs it (Server(handle_signals=True)), with a userspace TUN
#: whose far side answers pings; prints its port once listening, logs to stderr
SERVER = """
import json, logging, sys, trio
from helpers.serving import answer_echo, server_config
from trivpn.server.service import Server
from trivpn.testing.pki import PKI
from trivpn.tun.userspace import UserspaceTun

logging.basicConfig(level=logging.INFO, format="%(message)s")
d = sys.argv[1]
pki = PKI(**json.loads(open(f"{d}/pki.json").read()))
cfg = server_config(pki, f"management {d}/mgmt.sock unix\\nifconfig-pool-persist {d}/ipp.txt")
tun = UserspaceTun("srvtun", mtu=1500)

def factory(cfg, add_cleanup):
    add_cleanup(tun.close)
    return tun

async def main():
    server = Server(cfg, handle_signals=True, tun_factory=factory)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        nursery.start_soon(answer_echo, tun, [])
        print(server.addresses[0][1], flush=True)
    logging.getLogger("trivpn").info("stopped (%s)", server.manager.stop_reason)

trio.run(main)
"""


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGUSR1], ids=["SIGHUP", "SIGUSR1"])
async def test_hup_and_usr1_stop_gracefully(tmp_path: Path, sig: signal.Signals) -> None:
    pki = shared_pki()
    (tmp_path / "pki.json").write_text(json.dumps(dataclasses.asdict(pki)))  # the client's CA
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", SERVER, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        with trio.fail_after(BOUND):
            line = b""
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(100)
                assert chunk, "the server ended before listening"
                line += chunk
            profile = parse_profile(client_profile(pki, int(line)))
            with pytest.raises(SessionRestart, match="RESTART"):  # the client is told
                async with api.connect(profile, reconnect=False) as tunnel:
                    await ping(tunnel, "10.8.0.2", "10.8.0.1", 1)
                    proc.send_signal(sig)
                    await trio.sleep_forever()
            stderr = b""
            while chunk := await proc.stderr.receive_some(65536):
                stderr += chunk
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
    log = stderr.decode()
    assert proc.returncode == 0, log
    assert f"{sig.name} received, shutting down (a server run through the API does not restart" in log
    assert f"stopped ({sig.name})" in log
    assert "Traceback" not in log
    assert not (tmp_path / "mgmt.sock").exists()  # removed, not left stale
    assert "trivpn-test-client,10.8.0.2" in (tmp_path / "ipp.txt").read_text()  # the lease kept


async def test_signals_during_setup_are_handled(caplog: pytest.LogCaptureFixture) -> None:
    """A SIGUSR2 during the set-up (here: while the TUN is being made) once reached only the
    default action (the status listener came last) and killed the server half set up. The
    test's own handler stands in for that default action: it must see nothing."""
    pki = shared_pki()
    default_action: list[int] = []
    before = signal.signal(signal.SIGUSR2, lambda signum, _frame: default_action.append(signum))
    tun = UserspaceTun("sigtun", mtu=1500)
    closed: list[str] = []

    def factory(cfg: object, add_cleanup: Callable[[Callable[[], object]], None]) -> UserspaceTun:
        add_cleanup(lambda: closed.append("tun"))
        signal.raise_signal(signal.SIGUSR2)
        signal.raise_signal(signal.SIGHUP)
        return tun

    try:
        server = Server(server_config(pki), handle_signals=True, tun_factory=factory)
        with caplog.at_level(logging.INFO, logger="trivpn"), trio.fail_after(BOUND):
            await server.run()
    finally:
        signal.signal(signal.SIGUSR2, before)
    log = caplog.text
    assert default_action == []
    assert "OpenVPN CLIENT LIST" in log  # the status report (status-version 1)
    assert "SIGHUP received, shutting down (a server run through the API does not restart" in log
    assert server.manager.stop_reason == "SIGHUP" and closed == ["tun"]


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process `pid` has a handler for `sig` (its SigCgt mask)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(mask >> (sig - 1) & 1)


async def test_serve_keeps_signals_from_its_first_line(tmp_path: Path) -> None:
    """`python -m trivpn serve`: a SIGUSR2 and a SIGHUP as soon as the process handles
    signals (while it imports and reads its config) — before, SIGUSR2's default action killed
    it (exit -12); now the status is logged and SIGHUP restarts it before it set anything up
    (test_serve_restart.py); it comes up once, and SIGTERM then stops it with exit 0."""
    require_root("serve start-up signals test", ("unshare",))
    pki = shared_pki()
    conf = tmp_path / "server.conf"
    conf.write_text("\n".join([
        "server 10.8.0.0 255.255.255.0", "topology subnet", "dev tun", "proto udp", "port 1194", "dh none",
        f"<ca>\n{pki.ca_cert}</ca>", f"<cert>\n{pki.server_cert}</cert>", f"<key>\n{pki.server_key}</key>", "",
    ]))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # in a network namespace of its own (unshare execs: the pid stays): its TUN, addresses
    # and wildcard listener show up nowhere else
    proc = await trio.lowlevel.open_process(
        ["unshare", "--net", sys.executable, "-m", "trivpn", "serve", str(conf)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )
    try:
        assert proc.stdout is not None
        with trio.fail_after(BOUND):
            for _ in range(5000):  # until its handler is in (bounded: 10 s)
                if _catches(proc.pid, signal.SIGHUP) or proc.poll() is not None:
                    break
                await trio.sleep(0.002)
            proc.send_signal(signal.SIGUSR2)
            proc.send_signal(signal.SIGHUP)
            out = b""
            while b"Initialization Sequence Completed" not in out:
                chunk = await proc.stdout.receive_some(65536)
                assert chunk, out.decode()
                out += chunk
            proc.send_signal(signal.SIGTERM)
            while chunk := await proc.stdout.receive_some(65536):
                out += chunk
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
    log = out.decode()
    assert proc.returncode == 0, log
    assert "OpenVPN CLIENT LIST" in log
    assert "SIGHUP received, process restarting (the configuration file is read again)" in log
    assert "stopped (SIGHUP) before start-up finished" in log and "Traceback" not in log
    assert log.count("Initialization Sequence Completed") == 1
    assert "stopped (SIGTERM); tun0 removed" in log
