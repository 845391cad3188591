"""`trivpn serve` as the management interface sees it: the server's `ManagementHost`.

`ServerMonitor` answers the core from the live client table (status 1/2/3, per-client byte
counts, load-stats), acts on `kill CN|IP:port` (the session ends at once, the client is not
told, as OpenVPN), `client-kill CID [MSG]` (RESTART or MSG on the control channel, the end
`SCHEDULED_EXIT` seconds later) and `signal` (what the OS signal does: SIGUSR2 logs the
status, SIGTERM stops, SIGHUP/SIGUSR1 restart `trivpn serve` (server/restart.py; the
management socket is closed and opened again by the new server); the same log lines), and with `management-client-auth` it is the server's `ServerObserver`: every client's key exchange waits in `authorize` for
`client-auth`/`client-auth-nt`/`client-deny` after a `>CLIENT:CONNECT,CID,KID` and its ENV
block; `>CLIENT:ADDRESS`/`ESTABLISHED` follow when the client is ready, `>CLIENT:DISCONNECT`
when it leaves. The CID is the server-wide client number the status report shows as Client
ID; the KID counts the client's authorizations. Lines from `client-auth` are a
client-config-dir file's text, laid over the client's ccd entry (pushes after the ccd's).

A renegotiation asks again (`>CLIENT:REAUTH,CID,KID`): the new key waits for the answer while
the current one carries the traffic; a refusal ends the session (OpenVPN invalidates only the
new key, which ends it later). Not done: client-pending-auth.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import trio
from cryptography import x509

from trivpn import records
from trivpn.errors import ConfigError
from trivpn.management import commands as c
from trivpn.management import formats as f
from trivpn.management.core import ByteCounts, Notification, Reply
from trivpn.messages import AuthRequest, SendExit
from trivpn.observe.client import HISTORY, HostHistory
from trivpn.observe.figures import KeyClock, SessionFigures, current_key_id, figures_of
from trivpn.server.authscript import printable_username
from trivpn.server.ccd import CcdEntry, parse_ccd
from trivpn.server.statustask import server_status
from trivpn.status.format import StatusVersion, format_server_status, real_address_text, time_text
from trivpn.status.model import RealAddress
from trivpn.tlssession.negotiation import PeerInfo
from trivpn.tlssession.serverrole import SCHEDULED_EXIT
from trivpn.tlssession.tlsload import subject_fields

__all__ = ["ServerMonitor", "merge_entries"]

log = logging.getLogger("trivpn.server")


def merge_entries(base: CcdEntry | None, extra: CcdEntry) -> CcdEntry:
    """`extra` (management client-auth lines) laid over the client's ccd entry."""
    if base is None:
        return extra
    return dataclasses.replace(
        base,
        ifconfig_push=extra.ifconfig_push or base.ifconfig_push,
        ifconfig_ipv6_push=extra.ifconfig_ipv6_push or base.ifconfig_ipv6_push,
        iroutes=base.iroutes + extra.iroutes,
        iroutes_ipv6=base.iroutes_ipv6 + extra.iroutes_ipv6,
        # a push-reset among the lines clears the ccd's pushes too (they came before)
        push=extra.push if extra.push_reset else base.push + extra.push,
        push_reset=base.push_reset or extra.push_reset,
        push_remove=base.push_remove + extra.push_remove,
        disable=base.disable or extra.disable,
        warnings=base.warnings + extra.warnings,
    )


@records.dataclass(slots=True)
class _Pending:
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    accept: bool = False
    reason: str = ""
    client_reason: str = ""
    entry: CcdEntry | None = None


class ServerMonitor(HostHistory):
    """The server's management host and client-auth observer (see the module docstring)."""

    is_server = True

    def __init__(self, server: Any, *, wall: Callable[[], float] = time.time) -> None:
        self.server = server
        self.config = server.config
        self.wall = wall
        self.states: deque[f.StateRecord] = deque(maxlen=HISTORY)
        self.logs: deque[f.LogRecord] = deque(maxlen=HISTORY)
        self.notify: Callable[[list[Notification]], None] = lambda _: None
        self.on_handshake: Callable[[float], None] = lambda _: None
        self.nursery: trio.Nursery | None = None
        self.ready = trio.Event()
        self.hold_flag = False
        self._pending: dict[tuple[int, int], _Pending] = {}
        self._next_kid: dict[int, int] = {}
        self._announced: set[int] = set()
        self._clocks: dict[int, KeyClock] = {}
        self._handshakes: dict[int, float] = {}

    # -- lifecycle --------------------------------------------------------------------------

    def started(self) -> None:
        """The server listens: its one state, CONNECTED with the tunnel addresses."""
        cfg = self.config
        v4 = str(cfg.ifconfig[0]) if cfg.ifconfig else ""
        v6 = str(cfg.ifconfig_ipv6.ip) if cfg.ifconfig_ipv6 else ""
        self.add_state("CONNECTED", "SUCCESS", local_ip=v4, local_ipv6=v6)

    def add_state(self, name: str, description: str = "", **fields: str) -> None:
        record = f.StateRecord(int(self.wall()), name, description, **fields)
        self.states.append(record)
        self.notify([Notification.state(record)])

    def add_log(self, record: f.LogRecord) -> None:
        self.logs.append(record)
        self.notify([Notification.log(record)])

    # -- ServerObserver: what the client sessions report -------------------------------------

    def _daemon_env(self) -> list[tuple[str, str]]:
        """What OpenVPN puts in every block from the daemon itself (its "global env")."""
        cfg = self.config
        env = [("dev_type", "tun"), ("tun_mtu", str(cfg.tun_mtu or 1500)), ("verb", str(cfg.verb)),
               ("daemon", "0"), ("daemon_pid", str(os.getpid()))]
        if self.server.tun_name:
            env.append(("dev", self.server.tun_name))
        if cfg.ifconfig is not None:
            second = "ifconfig_netmask" if cfg.topology == "subnet" else "ifconfig_remote"
            env += [("ifconfig_local", str(cfg.ifconfig[0])), (second, str(cfg.ifconfig[1]))]
        if cfg.ifconfig_ipv6 is not None:
            env += [("ifconfig_ipv6_local", str(cfg.ifconfig_ipv6.ip)),
                    ("ifconfig_ipv6_netbits", str(cfg.ifconfig_ipv6.network.prefixlen))]
        for n, (_host, port) in enumerate(self.server.addresses[:1], 1):
            env += [(f"local_port_{n}", str(port)), (f"proto_{n}", client_proto(self.config, n))]
        return env

    def _client_env(
        self, client: Any, subject: str, peer_info: dict[str, str], username: str, common_name: str = ""
    ) -> list[tuple[str, str]]:
        """The client's own variables: address, names, peer-info, certificate."""
        env = [("untrusted_ip", _plain(client.addr[0])), ("untrusted_port", str(client.addr[1])),
               ("common_name", client.common_name or common_name), ("username", username)]
        env += f.peer_info_env(peer_info)  # the client's own text, made safe as OpenVPN does
        env += [(f"X509_0_{k}", v) for k, v in _leaf_fields(getattr(client, "peer_chain", ()))]
        env.append(("tls_id_0", subject))
        return env

    def _established(self) -> int:
        return sum(1 for x in self.server.clients.values() if x.ready is not None)

    async def authorize(self, client: Any, request: AuthRequest) -> tuple[str | None, str]:
        """management-client-auth: (None, "") to admit, else (reason to log, reason to send)."""
        cid = client.key
        kid = self._next_kid.get(cid, 0)
        self._next_kid[cid] = kid + 1
        pending = self._pending[(cid, kid)] = _Pending()
        peer_info = PeerInfo.parse(request.peer_info).items
        env = [("n_clients", str(self._established())), ("password", request.password)]
        env += self._client_env(client, request.peer_subject, peer_info, printable_username(request.username),
                                request.common_name)
        env += self._daemon_env()
        self._announced.add(cid)
        kind = "REAUTH" if request.key_id else "CONNECT"
        self.notify([Notification.always(*f.client_event(kind, [cid, kid], env))])
        timeout = self.config.hand_window / 2
        with trio.move_on_after(timeout):
            await pending.done.wait()
        self._pending.pop((cid, kid), None)
        if not pending.done.is_set():
            return f"no management client-auth within {timeout:g} s", ""
        if not pending.accept:
            return pending.reason or "denied by the management client", pending.client_reason
        if pending.entry is not None and not request.key_id:  # client-connect is not re-run
            if pending.entry.disable:
                return "disabled by the management client-auth lines", ""
            client.ccd_extra = pending.entry
        log.info("%r admitted by the management interface", client)
        return None, ""

    def _session_env(self, client: Any) -> list[tuple[str, str]]:
        """ESTABLISHED and DISCONNECT: the client's variables, its addresses, times."""
        ready = client.ready
        peer_info = dict(ready.peer_info.items) if ready is not None else {}
        subject = ready.peer_subject if ready is not None else ""
        username = printable_username(ready.username) if ready is not None else ""  # as OpenVPN remaps it
        env = self._client_env(client, subject, peer_info, username)
        if client.lease is not None:
            env += list(client.lease.env().items())
        env += [("trusted_ip", _plain(client.addr[0])), ("trusted_port", str(client.addr[1])),
                ("time_unix", str(int(client.created))), ("time_ascii", time_text(int(client.created)))]
        return env

    def client_ready(self, client: Any) -> None:
        self._handshakes[client.key] = seconds = max(0.0, self.wall() - client.created)
        # the key's age and `trivpn status`'s last handshake count from now, not the first read
        self._clocks.setdefault(client.key, KeyClock()).observe(current_key_id(client.stack), self.wall())
        self.on_handshake(seconds)
        if client.key not in self._announced:
            return
        lines: list[str] = []
        lease = client.lease
        if lease is not None:  # OpenVPN learns IPv4 first, then IPv6
            for item in (lease.ipv4, lease.ipv6):
                if item is not None:
                    lines += f.client_event("ADDRESS", [client.key, str(item.address), 1], None)
        env = [("n_clients", str(self._established())), *self._session_env(client), *self._daemon_env()]
        lines += f.client_event("ESTABLISHED", [client.key], env)
        self.notify([Notification.always(*lines)])

    def client_gone(self, client: Any) -> None:
        key = client.key
        self._clocks.pop(key, None)
        self._handshakes.pop(key, None)
        self._next_kid.pop(key, None)
        if key not in self._announced:
            return
        self._announced.discard(key)
        stats = client.stack.data.stats()
        env = self._session_env(client) + [
            ("bytes_received", str(stats.rx_bytes if stats else 0)),
            ("bytes_sent", str(stats.tx_bytes if stats else 0)),
            ("time_duration", str(int(self.wall() - client.created))),
        ] + self._daemon_env()
        self.notify([Notification.always(*f.client_event("DISCONNECT", [key], env))])

    # -- figures ---------------------------------------------------------------------------

    def all_figures(self) -> list[SessionFigures]:
        out = []
        wall = self.wall()
        for key, client in list(self.server.clients.items()):
            lease = client.lease
            out.append(figures_of(
                client.stack, self._clocks.setdefault(key, KeyClock()), wall,
                remote=real_address_text(_real(client)),
                handshake_seconds=self._handshakes.get(key),
                local_ipv4=str(lease.ipv4.address) if lease and lease.ipv4 else "",
                local_ipv6=str(lease.ipv6.address) if lease and lease.ipv6 else "",
                common_name=client.common_name, client_id=key,
            ))
        return out

    def figures_json(self) -> str:
        return json.dumps({
            "role": "server", "pid": os.getpid(), "state": "CONNECTED" if self.states else "",
            "sessions": [fig.as_dict() for fig in self.all_figures()],
        })

    # -- management host ---------------------------------------------------------------------

    def pending_queries(self) -> Sequence[str]:
        return ()

    def status_lines(self, version: int | None) -> Sequence[str] | None:
        if version is None:
            version = self.config.status.version if self.config.status is not None else 1
        v: StatusVersion = 3 if version == 3 else 2 if version == 2 else 1
        status = server_status(self.server.clients, self.server.hub, self.wall())
        return format_server_status(status, v).splitlines()[:-1]  # the core adds END

    def bytecounts(self) -> ByteCounts:
        rows = []
        for key, client in list(self.server.clients.items()):
            stats = client.stack.data.stats()
            rows.append((key, stats.rx_bytes if stats else 0, stats.tx_bytes if stats else 0))
        return ByteCounts(0, 0, clients=rows)

    def hold_waiting(self) -> int | None:
        return None

    def perform(self, command: c.Command) -> Reply | None:
        match command:
            case c.Signal(name):  # exactly what the OS signal does (WorkersManager.handle_signal)
                self.server.manager.handle_signal(signal.Signals[name])
            case c.Hold("query"):
                return Reply.success(f"hold={int(self.hold_flag)}")
            case c.Hold("on") | c.Hold("off"):
                self.hold_flag = command.action == "on"
            case c.AuthRetry(None):
                return Reply.success("auth-retry=none")
            case c.LoadStats():
                rows = self.bytecounts().clients or []
                return Reply.success(
                    f"nclients={len(rows)},bytesin={sum(r[1] for r in rows)},bytesout={sum(r[2] for r in rows)}"
                )
            case c.Kill(common_name=cn, address=addr):
                return self._kill(cn, addr)
            case c.ClientKill(cid, message):
                return self._client_kill(cid, message)
            case c.ClientAuth(cid, kid, lines):
                return self._decide(cid, kid, True, lines=lines, name="client-auth")
            case c.ClientAuthNt(cid, kid):
                return self._decide(cid, kid, True, name="client-auth")
            case c.ClientDeny(cid, kid, reason, client_reason):
                return self._decide(cid, kid, False, reason=reason, client_reason=client_reason or "",
                                    name="client-deny")
        return None

    def _kill(self, cn: str | None, addr: tuple[str, int] | None) -> Reply:
        clients = list(self.server.clients.values())
        if cn is not None:
            doomed = [x for x in clients if x.common_name == cn]
            if not doomed:
                return Reply.error(f"common name '{cn}' not found")
            text = f"common name '{cn}' found, {len(doomed)} client(s) killed"
        else:
            assert addr is not None
            doomed = [x for x in clients if (_plain(x.addr[0]), x.addr[1]) == addr]
            if not doomed:
                return Reply.error(f"client at address {addr[0]}:{addr[1]} not found")
            text = f"{len(doomed)} client(s) at address {addr[0]}:{addr[1]} killed"
        for client in doomed:
            log.info("%r killed by the management interface", client)
            client.cancel_scope.cancel()
        return Reply.success(text)

    def _client_kill(self, cid: int, message: str | None) -> Reply | None:
        client = self.server.clients.get(cid)
        if client is None or self.nursery is None:
            return Reply.error("client-kill command failed")
        text = message or "RESTART"
        log.info("%r: client-kill, sending %s", client, text)

        async def kill() -> None:
            try:
                await client.stack.commands.send(SendExit(message=text))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            await trio.sleep(SCHEDULED_EXIT)
            client.cancel_scope.cancel()

        self.nursery.start_soon(kill)
        return None

    def _decide(
        self, cid: int, kid: int, accept: bool, *, name: str, lines: Sequence[str] = (),
        reason: str = "", client_reason: str = "",
    ) -> Reply | None:
        pending = self._pending.get((cid, kid))
        if pending is None or pending.done.is_set():
            return Reply.error(f"{name} command failed")
        if lines:
            try:
                pending.entry = parse_ccd("\n".join(lines), source=f"client-auth {cid} {kid}")
            except ConfigError as exc:
                return Reply.error(f"{name} command failed: {exc}")
        pending.accept, pending.reason, pending.client_reason = accept, reason, client_reason
        pending.done.set()
        return None


def _leaf_fields(chain: Sequence[bytes]) -> list[tuple[str, str]]:
    """The client certificate's subject attributes as [("O", "x"), ("CN", "y")], from the
    certificate itself (a value holding ", CN=alice" must not add a field)."""
    try:
        leaf = x509.load_der_x509_certificate(chain[0]) if chain else None
    except ValueError:
        return []
    return [(k, v) for k, v in subject_fields(leaf.subject) if k.isalnum()] if leaf is not None else []


def client_proto(config: Any, n: int) -> str:
    listener = config.listeners[n - 1]
    return "tcp-server" if listener.proto == "tcp" else "udp"


def _plain(host: str) -> str:
    host = host.split("%", 1)[0]
    return host.removeprefix("::ffff:") if host.startswith("::ffff:") and "." in host else host


def _real(client: Any) -> RealAddress:
    host = ipaddress.ip_address(_plain(client.addr[0]))
    return RealAddress(host, client.addr[1], "tcp" if client.proto == "tcp" else "udp")
