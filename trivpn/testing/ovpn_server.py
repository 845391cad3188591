"""Debian's real openvpn 2.6 as a test server, and user-style client profiles for it.

Integration tests never mock the peer: `OpenVPNServer` writes a server config plus key
files into a temporary directory and runs `openvpn` inside a network namespace, waiting
for "Initialization Sequence Completed" in its log. `client_profile` renders the .ovpn a
user would get for that server, so the same text can feed trivpn or OpenVPN's own client.

Tunnel network: the server is 10.202.0.1/24 and fd00:202::1/64 (`server 10.202.0.0
255.255.255.0`, `server-ipv6 fd00:202::/64`). The server listens on its namespace's veth
address, IPv4 or IPv6 according to `proto`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import time
from collections.abc import Sequence
from dataclasses import field
from pathlib import Path

from trivpn.errors import ConfigError
from trivpn.records import dataclass
from trivpn.testing.netns import SERVER_V4, SERVER_V6, Netns
from trivpn.testing.pki import PKI, common_name
from trivpn.testing.process import stop_process

PROTOS = ("udp", "tcp", "udp6", "tcp6")
WRAPS = ("none", "tls-auth", "tls-crypt")
TOPOLOGIES = ("subnet", "net30")
TUNNEL_NET_V4 = "10.202.0.0"
TUNNEL_MASK_V4 = "255.255.255.0"
TUNNEL_V4 = "10.202.0.1"
TUNNEL_NET_V6 = "fd00:202::/64"
TUNNEL_V6 = "fd00:202::1"
#: The line openvpn logs once the tunnel device, routes and sockets are ready.
READY_LINE = "Initialization Sequence Completed"
#: Seconds `stop()` waits after SIGTERM before SIGKILL.
STOP_GRACE = 5.0
#: Characters of log shown when the server fails to start.
LOG_TAIL_CHARS = 4000
POLL_INTERVAL = 0.05


class ServerStartError(RuntimeError):
    """openvpn exited or did not finish initialising; the message ends with its log tail."""


@dataclass(slots=True)
class ServerOptions:
    """The knobs integration tests turn on the reference server."""

    proto: str = "udp"  # udp | tcp | udp6 | tcp6
    wrap: str = "tls-crypt"  # none | tls-auth | tls-crypt
    data_ciphers: str = "AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305"
    port: int = 1194
    topology: str = "subnet"  # subnet | net30
    ipv6: bool = True  # server-ipv6 fd00:202::/64
    keepalive: tuple[int, int] = (10, 60)
    auth: str | None = None  # tls-auth (and CBC data channel) digest, e.g. "SHA256"
    extra: list[str] = field(default_factory=list)  # verbatim extra server config lines

    def validate(self) -> None:
        """Raise ConfigError (one line) for values the server config cannot express."""
        if self.proto not in PROTOS:
            raise ConfigError(f"proto must be one of {', '.join(PROTOS)}, not {self.proto!r}")
        if self.wrap not in WRAPS:
            raise ConfigError(f"wrap must be one of {', '.join(WRAPS)}, not {self.wrap!r}")
        if self.topology not in TOPOLOGIES:
            raise ConfigError(
                f"topology must be one of {', '.join(TOPOLOGIES)}, not {self.topology!r}"
            )
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port must be 1..65535, not {self.port}")
        if not self.data_ciphers or any(c.isspace() for c in self.data_ciphers):
            raise ConfigError(
                f"data_ciphers must be a ':'-separated list, not {self.data_ciphers!r}"
            )
        interval, timeout = self.keepalive
        if interval <= 0 or timeout <= interval:
            raise ConfigError(f"keepalive needs 0 < interval < timeout, not {self.keepalive}")

    @property
    def is_tcp(self) -> bool:
        return self.proto.startswith("tcp")

    @property
    def is_v6(self) -> bool:
        return self.proto.endswith("6")


def _wrap_lines_server(opts: ServerOptions, key_file: str) -> list[str]:
    if opts.wrap == "tls-auth":
        return [f"tls-auth {key_file} 0"]
    if opts.wrap == "tls-crypt":
        return [f"tls-crypt {key_file}"]
    return []


def server_config(opts: ServerOptions, *, dev: str, local: str, workdir: Path) -> str:
    """The openvpn 2.6 server config for `opts` (key files live in `workdir`)."""
    opts.validate()
    proto = {"udp": "udp", "udp6": "udp6", "tcp": "tcp-server", "tcp6": "tcp6-server"}[opts.proto]
    lines = [
        "# written by trivpn.testing.ovpn_server",
        f"dev {dev}",
        "dev-type tun",
        f"proto {proto}",
        f"local {local}",
        f"port {opts.port}",
        f"topology {opts.topology}",
        f"server {TUNNEL_NET_V4} {TUNNEL_MASK_V4}",
    ]
    if opts.ipv6:
        lines.append(f"server-ipv6 {TUNNEL_NET_V6}")
    lines += [
        f"keepalive {opts.keepalive[0]} {opts.keepalive[1]}",
        f"ca {workdir / 'ca.crt'}",
        f"cert {workdir / 'server.crt'}",
        f"key {workdir / 'server.key'}",
        "dh none",
        f"data-ciphers {opts.data_ciphers}",
    ]
    if opts.auth:
        lines.append(f"auth {opts.auth}")
    lines += _wrap_lines_server(opts, str(workdir / "ta.key"))
    if not opts.is_tcp:
        # Tell clients on UDP to reconnect at once when the server restarts.
        lines.append("explicit-exit-notify 1")
    lines += [
        f"writepid {workdir / 'openvpn.pid'}",
        f"status {workdir / 'status.log'} 1",
        "status-version 2",
        "verb 4",
        *opts.extra,
    ]
    return "\n".join(lines) + "\n"


class OpenVPNServer:
    """Debian's `openvpn` running as a server inside one network namespace."""

    tunnel_v4: str = TUNNEL_V4
    tunnel_v6: str = TUNNEL_V6

    def __init__(
        self,
        ns: Netns,
        pki: PKI,
        opts: ServerOptions,
        workdir: Path,
        *,
        listen_v4: str = SERVER_V4,
        listen_v6: str = SERVER_V6,
    ) -> None:
        opts.validate()
        self.ns = ns
        self.pki = pki
        self.opts = opts
        self.workdir = Path(workdir)
        #: The address the client connects to (the server's veth address, v4 or v6).
        self.remote_host: str = listen_v6 if opts.is_v6 else listen_v4
        #: A fixed, unique TUN name, so several servers (or a stray one) never collide.
        self.dev = f"tvs{secrets.token_hex(3)}"
        self.config_path = self.workdir / "server.conf"
        self.log_path = self.workdir / "openvpn.log"
        self.output_path = self.workdir / "openvpn.out"
        self._proc: subprocess.Popen[bytes] | None = None

    def _write_files(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        files = {
            "ca.crt": self.pki.ca_cert,
            "server.crt": self.pki.server_cert,
            "server.key": self.pki.server_key,
            "ta.key": self.pki.static_key,
        }
        for name, text in files.items():
            path = self.workdir / name
            path.write_text(text)
            path.chmod(0o600)
        self.config_path.write_text(
            server_config(self.opts, dev=self.dev, local=self.remote_host, workdir=self.workdir)
        )

    def start(self, timeout: float = 15) -> None:
        """Start openvpn and wait until it has initialised; raise ServerStartError if not."""
        if self._proc is not None:
            raise RuntimeError("server already started")
        self._write_files()
        with self.output_path.open("wb") as out:
            self._proc = self.ns.popen(
                ["openvpn", "--config", str(self.config_path), "--log", str(self.log_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY_LINE in self.log_text():
                return
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                raise ServerStartError(
                    f"openvpn server exited with code {rc} during start-up; log tail:\n"
                    + self.log_text()[-LOG_TAIL_CHARS:]
                )
            time.sleep(POLL_INTERVAL)
        self.stop()
        raise ServerStartError(
            f"openvpn server not ready within {timeout}s; log tail:\n"
            + self.log_text()[-LOG_TAIL_CHARS:]
        )

    def stop(self) -> None:
        """SIGTERM, a bounded wait, then SIGKILL; calling it again does nothing."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, STOP_GRACE)

    @property
    def pid(self) -> int | None:
        """The server process's pid while it runs (its `/proc/PID/net` is the namespace's)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """openvpn's log, preceded by anything it printed before opening the log file."""
        parts = []
        for path in (self.output_path, self.log_path):
            with contextlib.suppress(FileNotFoundError):
                text = path.read_text(errors="replace")
                if text:
                    parts.append(text)
        return "".join(parts)

    def __enter__(self) -> OpenVPNServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_CLIENT_PROTO = {"udp": "udp", "udp6": "udp6", "tcp": "tcp", "tcp6": "tcp6"}


def _common_client_lines(pki: PKI, opts: ServerOptions, remote_host: str) -> list[str]:
    opts.validate()
    lines = [
        "client",
        "dev tun",
        f"proto {_CLIENT_PROTO[opts.proto]}",
        f"remote {remote_host} {opts.port}",
        "nobind",
        "remote-cert-tls server",
        f"verify-x509-name {common_name(pki.server_cert)} name",
        "persist-key",
        "persist-tun",
        f"data-ciphers {opts.data_ciphers}",
    ]
    if opts.auth:
        lines.append(f"auth {opts.auth}")
    lines.append("verb 3")
    return lines


def client_profile(
    pki: PKI,
    opts: ServerOptions,
    remote_host: str,
    *,
    inline: bool = True,
    extra: Sequence[str] = (),
) -> str:
    """A realistic user .ovpn for a server started with `opts`.

    With `inline=False` the profile names `ca.crt`, `client.crt`, `client.key` and `ta.key`
    relative to its own directory; create them with `write_client_files`.
    """
    if isinstance(extra, str):
        raise TypeError("extra must be a sequence of lines, not a string")
    lines = _common_client_lines(pki, opts, remote_host)
    if inline:
        for tag, pem in (("ca", pki.ca_cert), ("cert", pki.client_cert), ("key", pki.client_key)):
            lines += [f"<{tag}>", pem.strip(), f"</{tag}>"]
        if opts.wrap == "tls-auth":
            lines += ["key-direction 1", "<tls-auth>", pki.static_key.strip(), "</tls-auth>"]
        elif opts.wrap == "tls-crypt":
            lines += ["<tls-crypt>", pki.static_key.strip(), "</tls-crypt>"]
    else:
        lines += ["ca ca.crt", "cert client.crt", "key client.key"]
        if opts.wrap == "tls-auth":
            lines.append("tls-auth ta.key 1")
        elif opts.wrap == "tls-crypt":
            lines.append("tls-crypt ta.key")
    lines += list(extra)
    return "\n".join(lines) + "\n"


def write_client_files(directory: Path, pki: PKI, opts: ServerOptions) -> Path:
    """Write the files an `inline=False` profile refers to into `directory`; return it."""
    opts.validate()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {"ca.crt": pki.ca_cert, "client.crt": pki.client_cert, "client.key": pki.client_key}
    if opts.wrap != "none":
        files["ta.key"] = pki.static_key
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        if name.endswith(".key"):
            os.chmod(path, 0o600)
    return directory
