"""Start what an instance was asked to expose: the management socket, the status file task,
the metrics endpoint. Shared by `connect` and `serve`; imported only when one is configured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import trio

from trivpn.errors import ConfigError
from trivpn.hostnames import check_host_name
from trivpn.management import config as mconfig
from trivpn.management.core import ManagementHost
from trivpn.management.service import ManagementService
from trivpn.records import dataclass
from trivpn.status.writer import StatusWriter, write_status_file

__all__ = ["ManagementSpec", "host_port", "parse_host_port", "run_status_file", "start_management"]

log = logging.getLogger("trivpn")

#: OpenVPN creates its status file 0600 (it lists names and addresses)
STATUS_FILE_MODE = 0o600


@dataclass(frozen=True, slots=True)
class ManagementSpec:
    """`management IP PORT [pw-file]` or `management PATH unix [pw-file]`."""

    address: str
    port: int | None  # None: `address` is a unix socket path
    password_file: str | None = None


def host_port(host: str, port: int) -> str:
    """`host:port`, an IPv6 host in brackets (the form `parse_host_port` reads back)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[addr]:port`) or ConfigError."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536 or "[" in host or "]" in host:
        raise ConfigError(f"{what} must be HOST:PORT, not {text!r}")
    check_host_name(host, what)
    return host or "127.0.0.1", int(port)


async def start_management(
    nursery: trio.Nursery, host: ManagementHost, spec: ManagementSpec,
) -> ManagementService:
    """Listen as `spec` says; returns the service (its `broadcast` takes notifications)."""
    password = None
    if spec.password_file is not None:
        try:
            password = mconfig.read_password_file(spec.password_file)
        except OSError as exc:
            raise ConfigError(f"management: cannot read {spec.password_file}: {exc.strerror}") from None
        except mconfig.ManagementConfigError as exc:
            raise ConfigError(str(exc)) from None
    service = ManagementService(host, password=password)
    where = f"unix socket {spec.address}" if spec.port is None else host_port(spec.address, spec.port)
    try:
        if spec.port is None:
            await nursery.start(service.serve_unix, spec.address)
        else:
            listeners = await nursery.start(service.serve_tcp, spec.port, spec.address)
            where = host_port(spec.address, listeners[0].socket.getsockname()[1])  # port 0: the one bound
    except OSError as exc:
        raise ConfigError(f"management: cannot listen on {where}: {exc.strerror or exc}") from None
    except mconfig.ManagementConfigError as exc:
        raise ConfigError(str(exc)) from None
    log.info("management interface listening on %s", where)
    return service


async def run_status_file(path: str, seconds: float, text: Callable[[StatusWriter], str]) -> None:
    """Rewrite `path` at start and then every `seconds` (0: only at start)."""
    writer = StatusWriter(trio.current_time(), seconds)
    first = True
    while True:
        due = writer.get_timer()
        if due is None:
            await trio.sleep_forever()
            return
        await trio.sleep_until(due)
        if not writer.handle_timer(trio.current_time()):
            continue
        try:
            await trio.to_thread.run_sync(write_status_file, Path(path), text(writer), STATUS_FILE_MODE)
        except OSError as exc:
            if first:
                raise ConfigError(f"cannot write status file {path}: {exc.strerror or exc}") from None
            log.warning("cannot write status file %s: %s", path, exc.strerror or exc)
        first = False
