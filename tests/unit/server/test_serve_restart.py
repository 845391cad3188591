"""SIGHUP/SIGUSR1 restart `trivpn serve` in the same process (restart.py), as OpenVPN's do.
Before, both stopped it for good with exit 0: an operator's `systemctl reload` or
logrotate's postrotate left the server down.

* the decision, pure (`after_run`);
* in process, the loop `trivpn serve` runs (`serve_restarting`, the real Server with its
  signal handling and a userspace TUN): an OS SIGHUP after the file was edited restarts it
  with the new file in effect (a client told RESTART, a new client gets the new push), the
  management socket comes back and its `signal SIGUSR1` restarts without reading the file,
  SIGTERM ends it with 0;
* `python -m trivpn serve` as root in a network namespace of its own: a file made invalid
  before the SIGHUP, and a server that gave up root (`user nobody`), end with one line and
  exit 1 (what OpenVPN does in both cases)."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from helpers.mgmt import RawManagement
from helpers.profiles import shared_pki
from helpers.require import require_root
from helpers.serving import client_profile

from trivpn import api
from trivpn.cli_common import StartupSignals
from trivpn.errors import SessionRestart
from trivpn.profile.profile import parse_profile
from trivpn.server.config import load_server_config
from trivpn.server.config_model import Listener, ServerConfig
from trivpn.server.restart import Next, after_run, serve_restarting
from trivpn.server.service import Server
from trivpn.testing.pki import PKI
from trivpn.tun.userspace import UserspaceTun

HUP, USR1, TERM, INT = signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT
BOUND = 20
ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("signals", "dropped", "expected"),
    [
        ([HUP], None, Next(restart=True, reread=True, signal="SIGHUP")),
        ([USR1], None, Next(restart=True, reread=False, signal="SIGUSR1")),
        ([USR1, HUP], None, Next(restart=True, reread=True, signal="SIGHUP")),  # the file is read
        ([HUP, HUP, HUP], None, Next(restart=True, reread=True, signal="SIGHUP")),  # one restart
        ([HUP, TERM], None, Next(restart=False)),  # SIGTERM during the restart: for good
        ([INT, HUP], None, Next(restart=False)),
        ([], None, Next(restart=False)),  # stopped by the API or the like
    ],
)
def test_after_run_decides(signals: list[int], dropped: str | None, expected: Next) -> None:
    assert after_run(signals, root_given_up=dropped) == expected


def test_after_run_without_root_stops_with_status_1() -> None:
    nxt = after_run([HUP], root_given_up="nobody")
    assert (nxt.restart, nxt.status, nxt.signal) == (False, 1, "SIGHUP")
    assert nxt.error is not None and "gave up root for nobody" in nxt.error and "\n" not in nxt.error
    assert after_run([TERM, USR1], root_given_up="nobody") == Next(restart=False)  # a stop is a stop


def _conf(pki: PKI, d: Path, extra: str = "", *, local: bool = True, management: bool = True) -> str:
    """A server config; in a network namespace of its own (`local=False`), with its CA in the
    file ca.crt next to it (a file the config names, read again on SIGHUP)."""
    (d / "ca.crt").write_text(pki.ca_cert)
    return "\n".join([
        "server 10.8.0.0 255.255.255.0", "topology subnet", "dev tun", "proto udp",
        *(["local 127.0.0.1"] if local else []), "port 1194", "keepalive 10 60", "dh none",
        *([f"management {d}/mgmt.sock unix"] if management else []), "ca ca.crt", f"<cert>\n{pki.server_cert}</cert>",
        f"<key>\n{pki.server_key}</key>", f"<tls-crypt>\n{pki.static_key}</tls-crypt>", extra, "",
    ])


class _Counter(logging.Handler):
    """Counts "Initialization Sequence Completed": how many times the server came up."""

    def __init__(self) -> None:
        super().__init__()
        self.ups = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.ups += record.getMessage() == "Initialization Sequence Completed"


async def test_sighup_restarts_with_the_edited_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pki = shared_pki()
    conf, sock = tmp_path / "server.conf", tmp_path / "mgmt.sock"
    conf.write_text(_conf(pki, tmp_path, f"status {tmp_path}/status-1.txt 60"))
    port = [0]  # the listener: any free port at first, the same one after each restart

    def load() -> ServerConfig:
        cfg = load_server_config(conf)
        return dataclasses.replace(cfg, listeners=(Listener("udp", port[0], "127.0.0.1", 4),))

    servers: list[Server] = []
    saved = {sig: signal.getsignal(sig) for sig in (HUP, USR1, signal.SIGUSR2, INT, TERM)}
    keeper = StartupSignals()

    def start(cfg: ServerConfig) -> Server:
        tun = UserspaceTun(f"rst{len(servers)}", mtu=1500)

        def factory(_cfg: object, add_cleanup: Callable[[Callable[[], object]], None]) -> UserspaceTun:
            add_cleanup(tun.close)
            return tun

        servers.append(Server(cfg, handle_signals=True, tun_factory=factory, kept_signals=keeper.take, restarts=True))
        return servers[-1]

    counter = _Counter()
    logging.getLogger("trivpn").addHandler(counter)
    status: list[int] = []

    async def up(n: int) -> None:
        for _ in range(2000):  # bounded (fail_after too)
            if counter.ups >= n:
                return
            await trio.sleep(0.005)
        raise AssertionError(f"not up a {n}. time")

    async def management() -> RawManagement:
        m = await RawManagement.unix(str(sock))
        assert (await m.line()).startswith(">INFO:OpenVPN Management Interface Version 5")
        return m

    try:
        with caplog.at_level(logging.INFO, logger="trivpn"), trio.fail_after(BOUND):
            async with trio.open_nursery() as nursery:
                async def run() -> None:
                    status.append(await serve_restarting(load(), load, start, keeper))

                nursery.start_soon(run)
                await up(1)
                port[0] = servers[0].addresses[0][1]
                profile = parse_profile(client_profile(pki, port[0]))
                with pytest.raises(SessionRestart, match="RESTART"):  # told, so it reconnects at once
                    async with api.connect(profile, reconnect=False) as tunnel:
                        assert tunnel.settings.routes == []
                        conf.write_text(_conf(pki, tmp_path, f"status {tmp_path}/status-2.txt 60\n"
                                                             'push "route 192.168.77.0 255.255.255.0"'))
                        os.kill(os.getpid(), HUP)
                        await trio.sleep_forever()
                await up(2)
                assert servers[1].addresses == [("127.0.0.1", port[0])]  # the same port bound again
                for _ in range(400):  # bounded: the status task writes its first report just after start-up
                    if (tmp_path / "status-2.txt").exists():
                        break
                    await trio.sleep(0.005)
                assert (tmp_path / "status-2.txt").exists()  # the edited file is in effect
                async with api.connect(profile, reconnect=False) as tunnel:
                    assert [r.network for r in tunnel.settings.routes] == ["192.168.77.0"]

                # SIGUSR1 through the management socket the restart made anew: the file, even
                # an invalid one now, is not read again
                conf.write_text("no-such-option\n")
                m = await management()
                assert await m.command("signal SIGUSR1") == ["SUCCESS: signal SIGUSR1 thrown"]
                await up(3)
                assert servers[2].config is servers[1].config
                await m.stream.aclose()
                m = await management()  # the socket is there again
                await m.stream.aclose()
                os.kill(os.getpid(), TERM)
    finally:
        logging.getLogger("trivpn").removeHandler(counter)
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    log = caplog.text
    assert status == [0] and counter.ups == 3
    assert "SIGHUP received, process restarting (the configuration file is read again)" in log
    assert "SIGUSR1 received, process restarting (with the configuration already loaded)" in log
    assert "SIGTERM received, shutting down" in log
    assert not sock.exists()


async def test_sigterm_while_the_file_is_read_again_stops_for_good(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A SIGTERM (and one more SIGHUP) that comes while a restart reads the file: kept, the
    restarted server stops before it sets anything up, exit 0, no restart after that."""
    pki = shared_pki()
    conf = tmp_path / "server.conf"
    conf.write_text(_conf(pki, tmp_path, management=False))
    saved = {sig: signal.getsignal(sig) for sig in (HUP, USR1, signal.SIGUSR2, INT, TERM)}
    keeper = StartupSignals()
    servers: list[Server] = []
    reads = []

    def load() -> ServerConfig:
        reads.append(1)
        if len(reads) > 1:  # the re-read
            signal.raise_signal(TERM)
            signal.raise_signal(HUP)
        cfg = load_server_config(conf)
        return dataclasses.replace(cfg, listeners=(Listener("udp", 0, "127.0.0.1", 4),))

    def start(cfg: ServerConfig) -> Server:
        tun = UserspaceTun("rsttun", mtu=1500)

        def factory(_cfg: object, add_cleanup: Callable[[Callable[[], object]], None]) -> UserspaceTun:
            add_cleanup(tun.close)
            signal.raise_signal(HUP)  # the first server restarts as soon as it is up
            return tun

        servers.append(Server(cfg, handle_signals=True, tun_factory=factory, kept_signals=keeper.take, restarts=True))
        return servers[-1]

    try:
        with caplog.at_level(logging.INFO, logger="trivpn"), trio.fail_after(BOUND):
            status = await serve_restarting(load(), load, start, keeper)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert status == 0 and len(servers) == 2 and len(reads) == 2
    assert servers[1].tun_name is None  # nothing was set up
    assert "stopped (SIGTERM) before start-up finished" in caplog.text


def _serve(conf: Path) -> list[str]:
    """`python -m trivpn serve CONF` in a network namespace of its own (its TUN, addresses
    and routes stay there; it listens on the wildcard address, lo need not be up)."""
    return ["unshare", "--net", sys.executable, "-m", "trivpn", "serve", str(conf)]


async def _until(stream: trio.abc.ReceiveStream, text: bytes, out: bytearray) -> None:
    while text not in out:
        chunk = await stream.receive_some(65536)
        assert chunk, out.decode()
        out += chunk


@pytest.mark.parametrize("case", ["invalid file", "root given up"])
async def test_a_restart_that_cannot_be_done_exits_1(tmp_path: Path, case: str) -> None:
    require_root("serve restart test", ("unshare",))
    pki = shared_pki()
    conf = tmp_path / "server.conf"
    if case == "root given up":  # (no management socket: as nobody it could not remove it)
        conf.write_text(_conf(pki, tmp_path, "user nobody", local=False, management=False))
    else:
        conf.write_text(_conf(pki, tmp_path, local=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await trio.lowlevel.open_process(_serve(conf), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            env=env, cwd=ROOT)
    out, err = bytearray(), bytearray()
    try:
        assert proc.stdout is not None and proc.stderr is not None
        with trio.fail_after(BOUND):
            await _until(proc.stdout, b"Initialization Sequence Completed", out)
            if case == "invalid file":  # a file the config names, not the config itself
                (tmp_path / "ca.crt").write_text("not a certificate\n")
            proc.send_signal(HUP)
            while chunk := await proc.stdout.receive_some(65536):
                out += chunk
            while chunk := await proc.stderr.receive_some(65536):
                err += chunk
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
    log, errors = out.decode(), err.decode()
    assert proc.returncode == 1, log + errors
    assert "Traceback" not in log + errors and log.count("Initialization Sequence Completed") == 1
    if case == "invalid file":
        assert "SIGHUP received, process restarting (the configuration file is read again)" in log
        assert "stopped (SIGHUP); tun0 removed" in log
        lines = errors.splitlines()
        assert len(lines) == 1 and lines[0].startswith("trivpn: error: cannot restart after SIGHUP: "), errors
        assert "option 'ca': no PEM certificate found" in lines[0]
    else:
        assert "SIGHUP received, cannot restart as nobody" in log
        assert "error: SIGHUP cannot restart the server: it gave up root for nobody" in log
        assert "stopped (SIGHUP); tun0 removed" in log and errors == ""
        assert "SIGHUP: restarting" not in log
    assert not (tmp_path / "mgmt.sock").exists()

