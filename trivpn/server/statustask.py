"""`status FILE [N]` and SIGUSR2 for `trivpn serve`: the live client table as a status report.

`server_status` reads the server's state into a frozen `ServerStatus` (the formatters in
trivpn.status do the rest). What each column holds:

- Common Name: the client certificate's CN, `UNDEF` while the TLS handshake is still running
  (OpenVPN lists such clients too). Username: `UNDEF` (no auth-user-pass-verify yet).
- Real Address: the client's current transport address (it follows a float), with its proto.
- Virtual Address / Virtual IPv6 Address: the pool lease.
- Bytes Received / Sent: the client's data-channel payload counters (`DataService.stats()`,
  plaintext bytes of authenticated data packets; control packets and overhead are not
  counted, unlike OpenVPN's link counters, so the figures are a little lower than its).
- Connected Since: when the client's session was created (its first admitted packet).
- Client ID: the server-wide client number; Peer ID: the demux's; cipher: the negotiated
  data cipher, `none` before the first key.
- ROUTING_TABLE Last Ref: the owner's connect time. OpenVPN refreshes it on every packet
  routed; trivpn's router keeps no per-route clock, so it is the route's earliest bound.

The file task writes at start and then every N seconds (`StatusWriter`), mode 0600 like
OpenVPN, in a worker thread (the write is blocking IO). On exit the file is left as last
written: Debian's openvpn 2.6.14 neither rewrites nor deletes it at SIGTERM (checked with
`status FILE 60`: same mtime and content after the exit). SIGUSR2 logs the same report in
the configured status-version, as OpenVPN's server does (multi.c, M_INFO).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import trio

from trivpn import __version__
from trivpn.errors import ConfigError
from trivpn.server.clientsession import ClientSession
from trivpn.server.config_model import StatusFile
from trivpn.server.hub import Hub
from trivpn.status.format import StatusVersion, format_server_status
from trivpn.status.model import ClientEntry, RealAddress, RouteEntry, ServerStatus, VirtualAddress
from trivpn.status.writer import StatusWriter, write_status_file

__all__ = ["STATUS_FILE_MODE", "log_status", "run_status_file", "server_status"]

log = logging.getLogger("trivpn.server")

#: OpenVPN creates its status file 0600: it lists names and addresses.
STATUS_FILE_MODE = 0o600
TITLE = f"trivpn {__version__}"


def _real_address(client: ClientSession) -> RealAddress:
    host = ipaddress.ip_address(client.addr[0].split("%", 1)[0])
    return RealAddress(host, client.addr[1], "tcp" if client.proto == "tcp" else "udp")


def _virtual(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> VirtualAddress:
    """A learned host route prints as a bare address, an iroute network with its prefix."""
    return net.network_address if net.prefixlen == net.max_prefixlen else net


def server_status(clients: Mapping[int, ClientSession], hub: Hub, now: float) -> ServerStatus:
    """The server's clients and routes at wall-clock time `now` (see the module docstring)."""
    entries = []
    for key, c in clients.items():
        stats = c.stack.data.stats()
        lease = c.lease
        entries.append(ClientEntry(
            common_name=c.common_name or None,
            real_address=_real_address(c),
            virtual_v4=lease.ipv4.address if lease is not None and lease.ipv4 is not None else None,
            virtual_v6=lease.ipv6.address if lease is not None and lease.ipv6 is not None else None,
            bytes_received=stats.rx_bytes if stats is not None else 0,
            bytes_sent=stats.tx_bytes if stats is not None else 0,
            connected_since=int(c.created),
            username=c.admission.username or None,  # auth-user-pass only; else UNDEF
            client_id=key,
            peer_id=c.peer_id,
            cipher=c.ready.cipher if c.ready is not None else "none",
        ))
    routes = [
        RouteEntry(_virtual(net), owner.common_name or None, _real_address(owner), int(owner.created))
        for net, key in hub.router.routes()
        if (owner := clients.get(key)) is not None
    ]
    return ServerStatus(title=TITLE, time=int(now), clients=tuple(entries), routes=tuple(routes))


async def run_status_file(
    option: StatusFile, clients: Mapping[int, ClientSession], hub: Hub,
    write: Callable[[Path, str, int], None] = write_status_file,
) -> None:
    """Rewrite `option.path` now and then every `option.seconds` (0: only at start).
    `write` is the atomic replace, or an in-place rewrite through a descriptor opened
    before the server dropped its privileges (privdrop.py)."""
    version: StatusVersion = 3 if option.version == 3 else 2 if option.version == 2 else 1
    writer = StatusWriter(trio.current_time(), option.seconds, version)
    path = Path(option.path)
    first = True
    while True:
        due = writer.get_timer()
        if due is None:
            await trio.sleep_forever()
        await trio.sleep_until(due)
        if not writer.handle_timer(trio.current_time()):
            continue
        text = writer.text(server_status(clients, hub, time.time()))
        try:
            await trio.to_thread.run_sync(write, path, text, STATUS_FILE_MODE)
        except OSError as exc:
            if first:  # as OpenVPN, which cannot open its status file at start
                raise ConfigError(f"cannot write status file {path}: {exc.strerror or exc}") from None
            log.warning("cannot write status file %s: %s", path, exc.strerror or exc)
        first = False


def log_status(clients: Mapping[int, ClientSession], hub: Hub, version: int) -> None:
    """The report in `version`, one log line per report line (what SIGUSR2 does: the
    server's workers manager calls it, service.Server.log_status)."""
    v: StatusVersion = 3 if version == 3 else 2 if version == 2 else 1
    for line in format_server_status(server_status(clients, hub, time.time()), v).splitlines():
        log.info("%s", line)

