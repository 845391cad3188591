"""SIGHUP/SIGUSR1 stop `trivpn serve` gracefully (it does not reload): before, the default
action killed it at once (exit 129/138) with the leases unwritten, the clients untold and
the management socket left behind. A subprocess runs the real Server with its signal
handling (rootless: a userspace TUN) and a trivpn client connected on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from helpers.profiles import shared_pki
from helpers.serving import client_profile, ping

from trivpn import api
from trivpn.errors import SessionRestart
from trivpn.profile.profile import parse_profile

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
    assert f"{sig.name} received, trivpn serve does not reload or restart: shutting down" in log
    assert f"stopped ({sig.name})" in log
    assert "Traceback" not in log
    assert not (tmp_path / "mgmt.sock").exists()  # removed, not left stale
    assert "trivpn-test-client,10.8.0.2" in (tmp_path / "ipp.txt").read_text()  # the lease kept
