"""The server's scripts: how they run and the environment OpenVPN 2.6 gives them.

`client-connect FILE-ARG`, `client-disconnect` and `learn-address add|update|delete ADDR
[CN]` (and the shared parts of `auth-user-pass-verify`) see the variables Debian's
openvpn 2.6 sets, checked side by side in tests/integration/test_serve_scripts.py:

* the daemon's: `config`, `daemon`, `daemon_pid`, `daemon_start_time`,
  `daemon_log_redirect`, `verb`, `dev`, `dev_type`, `tun_mtu`, the server's own
  `ifconfig_*`, `local_1`/`local_port_1`/`proto_1`/`remote_port_1`, `redirect_gateway`,
  `script_context`, and every `setenv`;
* the client's: `common_name`, `username`, `trusted_ip`/`trusted_port` (`..._ip6` for an
  IPv6 peer) and the same as `untrusted_*`, `time_ascii`/`time_unix`, the pool's
  `ifconfig_pool_*`, every `IV_*`/`UV_*` peer-info line, and for each certificate of the
  verified chain (depth N, 0 = the client's) `tls_id_N`, `tls_serial_N`,
  `tls_serial_hex_N`, `tls_digest_N` (SHA-1), `tls_digest_sha256_N`, `X509_N_<attr>`;
* client-disconnect adds `bytes_received`, `bytes_sent`, `time_duration`.

Nothing of trivpn's own environment is passed on (OpenVPN starts scripts with only its
variables), no secret is ever in argv, and every run is bounded: a script still running
after its time is killed with its process group. The run never blocks the trio loop.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence

import trio
from cryptography import x509

from trivpn.records import dataclass
from trivpn.server.config_model import ServerConfig
from trivpn.server.pool_types import Lease
from trivpn.tlssession.tls import format_subject
from trivpn.tlssession.tlsload import subject_fields

__all__ = [
    "SCRIPT_SECONDS",
    "UNDEF",
    "DaemonInfo",
    "certificate_env",
    "client_env",
    "daemon_env",
    "run_script",
    "time_env",
]

log = logging.getLogger("trivpn.server")

#: How long client-connect / client-disconnect / learn-address may run.
SCRIPT_SECONDS = 15.0
#: What OpenVPN calls a client without a common name (no certificate, no
#: username-as-common-name) in learn-address's arguments; its scripts then get no
#: `common_name` variable, and the server itself keeps the name empty (no duplicate-cn
#: retirement among nameless clients).
UNDEF = "UNDEF"
#: Peer-info lines passed to scripts at most (the block comes from the client).
MAX_PEER_INFO_VARS = 64


@dataclass(frozen=True, slots=True)
class DaemonInfo:
    """What the daemon-wide variables need besides the config."""

    dev: str
    pid: int
    start_time: int


def daemon_env(cfg: ServerConfig, info: DaemonInfo) -> dict[str, str]:
    """The server's own variables (the same for every script call)."""
    env = {
        "config": cfg.source or "",
        "daemon": "0",
        "daemon_log_redirect": "0",
        "daemon_pid": str(info.pid),
        "daemon_start_time": str(info.start_time),
        "verb": str(cfg.verb),
        "dev": info.dev,
        "dev_type": "tun",
        "tun_mtu": str(cfg.tun_mtu or 1500),
        "redirect_gateway": "0",
        "script_context": "init",
    }
    if cfg.ifconfig is not None:
        local, second = cfg.ifconfig
        env["ifconfig_local"] = str(local)
        env["ifconfig_remote" if cfg.topology == "net30" else "ifconfig_netmask"] = str(second)
    if cfg.ifconfig_ipv6 is not None:
        env["ifconfig_ipv6_local"] = str(cfg.ifconfig_ipv6.ip)
        env["ifconfig_ipv6_netbits"] = str(cfg.ifconfig_ipv6.network.prefixlen)
        env["ifconfig_ipv6_remote"] = str(cfg.ifconfig_ipv6.ip + 1)
    if cfg.listeners:
        first = cfg.listeners[0]
        if first.local is not None:
            env["local_1"] = first.local
        env["local_port_1"] = env["remote_port_1"] = str(first.port)
        env["proto_1"] = "tcp-server" if first.proto == "tcp" else "udp"
    env.update(cfg.setenv)
    return env


def _colon_hex(data: bytes) -> str:
    return ":".join(f"{b:02x}" for b in data)


def certificate_env(chain: Sequence[bytes]) -> dict[str, str]:
    """`tls_*_N` and `X509_N_*` for each certificate of the verified chain (leaf first)."""
    env: dict[str, str] = {}
    for depth, der in enumerate(chain[:16]):
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            continue
        serial = cert.serial_number
        env[f"tls_id_{depth}"] = _printable(format_subject(cert.subject))
        env[f"tls_serial_{depth}"] = str(serial)
        env[f"tls_serial_hex_{depth}"] = _colon_hex(serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big"))
        env[f"tls_digest_{depth}"] = _colon_hex(hashlib.sha1(der).digest())
        env[f"tls_digest_sha256_{depth}"] = _colon_hex(hashlib.sha256(der).digest())
        for key, value in subject_fields(cert.subject):  # the last of a repeated name wins
            if key.replace("_", "").isalnum():
                env[f"X509_{depth}_{key}"] = _printable(value)
    return env


def time_env(connected: float) -> dict[str, str]:
    """`time_ascii` (local time, OpenVPN 2.6's format) and `time_unix` of the connection."""
    return {
        "time_ascii": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(connected)),
        "time_unix": str(int(connected)),
    }


def _printable(value: str) -> str:
    return "".join(c if " " <= c <= "~" else "_" for c in value[:1024])


def client_env(
    *, common_name: str, username: str | None, addr: tuple[str, int], peer_info: Mapping[str, str],
    chain: Sequence[bytes], lease: Lease | None, connected: float, established: bool = True,
) -> dict[str, str]:
    """One client's variables (see the module docstring). Before it is `established` (the
    user-pass-verify call) OpenVPN has no `trusted_*`, `time_*`, nor a `common_name`
    without a certificate."""
    env: dict[str, str] = {}
    infos = [(k, v) for k, v in peer_info.items() if k.startswith(("IV_", "UV_")) and k.replace("_", "").isalnum()]
    env.update((k, _printable(v)) for k, v in infos[:MAX_PEER_INFO_VARS])
    env.update(certificate_env(chain))
    if common_name and (established or chain):  # no name: no variable (UNDEF only in arguments)
        env["common_name"] = _printable(common_name)
    if username:
        env["username"] = _printable(username)
    host, port = addr
    if host.lower().startswith("::ffff:") and "." in host:
        host = host[7:]  # a v4 client on a dual-stack socket is a v4 client
    suffix = "_ip6" if ":" in host else "_ip"
    for kind in ("trusted", "untrusted") if established else ("untrusted",):
        env[f"{kind}{suffix}"] = host
        env[f"{kind}_port"] = str(port)
    if established:
        env.update(time_env(connected))
    if lease is not None:
        env.update(lease.env())
    return env


async def run_script(
    command: str, args: Sequence[str], env: Mapping[str, str], seconds: float = SCRIPT_SECONDS
) -> int | None:
    """Run `command` (split like a shell word list) with `args` appended: its exit status,
    None when it could not start or did not finish within `seconds` (then it is killed with
    its process group). Never raises for the script's sake."""

    async def kill_group(proc: trio.Process) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    try:
        argv = [*shlex.split(command), *args]
    except ValueError as exc:
        log.warning("cannot split the script command %r: %s", command[:80], exc)
        return None
    with trio.move_on_after(seconds):
        try:
            done = await trio.run_process(
                argv, env=dict(env), check=False, stdin=subprocess.DEVNULL,
                start_new_session=True, deliver_cancel=kill_group,
            )
        except (OSError, ValueError) as exc:  # ValueError: an empty command
            log.warning("script %s could not run: %s", argv[0] if argv else "?", getattr(exc, "strerror", None) or exc)
            return None
        return done.returncode
    log.warning("script %s did not finish within %g s and was killed", argv[0] if argv else "?", seconds)
    return None
