"""Debian's openvpn 2.6 with a hand-written config: a point-to-point TLS peer, or a PKI-less server.

`OpenVPNServer` (ovpn_server.py) always runs `mode server` with a CA. Two set-ups need other
configs: point-to-point TLS mode (`tls-server` with `ifconfig`, no `mode server`, no push; the
data cipher is settled by P2P NCP) and 2.6's PKI-less mode (self-signed certificates and
`peer-fingerprint`, no `ca`). `ConfigPeer` runs any such config in a namespace; `p2p_config`
and `pkiless_server_config` write the two. In p2p mode openvpn logs "Initialization Sequence
Completed" only once a peer has connected, so readiness is "its socket is bound".
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from trivpn.testing.netns import Netns
from trivpn.testing.ovpn_server import LOG_TAIL_CHARS, POLL_INTERVAL, STOP_GRACE, ServerStartError
from trivpn.testing.process import stop_process

#: The p2p tunnel: the openvpn peer is .1, the trivpn end .2.
P2P_PEER_V4 = "10.9.0.1"
P2P_LOCAL_V4 = "10.9.0.2"
P2P_PEER_V6 = "fd00:9::1"
P2P_LOCAL_V6 = "fd00:9::2"
#: What openvpn logs once its UDP socket is bound (p2p: before any peer is there).
BOUND_LINE = "link local (bound)"
READY_LINE = "Initialization Sequence Completed"


def p2p_config(
    *, dev: str, local: str, port: int, data_ciphers: str, workdir: Path, wrap: str = "tls-crypt",
    extra: Sequence[str] = (),
) -> list[str]:
    """`openvpn --tls-server --ifconfig 10.9.0.1 10.9.0.2` as a config file (key files in workdir)."""
    lines = [
        f"dev {dev}", "dev-type tun", "proto udp", f"local {local}", f"port {port}",
        "tls-server", "dh none",
        f"ca {workdir / 'ca.crt'}", f"cert {workdir / 'peer.crt'}", f"key {workdir / 'peer.key'}",
        f"ifconfig {P2P_PEER_V4} {P2P_LOCAL_V4}",
        f"ifconfig-ipv6 {P2P_PEER_V6}/64 {P2P_LOCAL_V6}",
        f"data-ciphers {data_ciphers}",
        "keepalive 10 60",
    ]
    if wrap == "tls-crypt":
        lines.append(f"tls-crypt {workdir / 'ta.key'}")
    elif wrap == "tls-auth":
        lines.append(f"tls-auth {workdir / 'ta.key'} 0")
    return [*lines, "verb 4", *extra]


def pkiless_server_config(
    *, dev: str, local: str, port: int, client_fingerprint: str, workdir: Path, extra: Sequence[str] = ()
) -> list[str]:
    """A `mode server` config without `ca`: self-signed cert, the client's cert by fingerprint."""
    return [
        f"dev {dev}", "dev-type tun", "proto udp", f"local {local}", f"port {port}",
        "topology subnet", "server 10.202.0.0 255.255.255.0", "keepalive 10 60",
        f"cert {workdir / 'peer.crt'}", f"key {workdir / 'peer.key'}", "dh none",
        f"peer-fingerprint {client_fingerprint}",
        f"tls-crypt {workdir / 'ta.key'}", "verb 4", *extra,
    ]


class ConfigPeer:
    """Debian's `openvpn` on a given config inside one namespace (start, log, stop)."""

    def __init__(self, ns: Netns, workdir: Path, files: Mapping[str, str]) -> None:
        self.ns = ns
        self.workdir = Path(workdir)
        self.files = dict(files)
        #: a unique TUN name, so peers in parallel tests never collide
        self.dev = f"tvp{secrets.token_hex(3)}"
        self.log_path = self.workdir / "openvpn.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, config: Sequence[str], *, ready: str = BOUND_LINE, timeout: float = 15) -> None:
        """Write the key files and `config`, start openvpn, wait for `ready` in its log."""
        if self._proc is not None:
            raise RuntimeError("peer already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name, text in self.files.items():
            path = self.workdir / name
            path.write_text(text)
            path.chmod(0o600)
        conf = self.workdir / "peer.conf"
        conf.write_text("\n".join(config) + "\n")
        self._proc = self.ns.popen(
            ["openvpn", "--config", str(conf), "--log", str(self.log_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.workdir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready in self.log_text():
                return
            if self._proc.poll() is not None:
                raise ServerStartError(
                    f"openvpn exited with code {self._proc.returncode}; log tail:\n{self.log_text()[-LOG_TAIL_CHARS:]}"
                )
            time.sleep(POLL_INTERVAL)
        self.stop()
        raise ServerStartError(f"openvpn not ready within {timeout}s:\n{self.log_text()[-LOG_TAIL_CHARS:]}")

    def stop(self) -> None:
        """SIGTERM, a bounded wait, then SIGKILL; calling it again does nothing."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, STOP_GRACE)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return self.log_path.read_text(errors="replace")
        return ""
