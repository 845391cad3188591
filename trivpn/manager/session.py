"""The manager role: create the TUN, run an unprivileged tunnel process, apply its settings.

Theory of operation
-------------------
`open_tunnel` is the privileged half. It reads the profile (the tunnel may not be allowed
to), creates the TUN device, and starts ``python -m trivpn tunnel`` with two pipes and the
TUN fd inherited (same fd numbers), in its own session so a terminal's Ctrl+C reaches only
us. The tunnel drops to an unprivileged user (`tunnel_user`) before it reads anything from
the pipe. Over the protocol we send Start; while the tunnel connects it asks us, with a
`NetworkSettingsRequest`, to put addresses, routes and DNS on the TUN, which we do with
rtnetlink (`NetConfigurator`) and undo exactly on exit. Its `Log` messages are re-logged on
the "trivpn.tunnel" logger; its `PeerUpdate`s are kept (`ManagedTunnel.peer`) and offered
as an async iterator.

Leaving the context sends Stop (bounded), waits for the process (bounded, then kills it),
removes what we configured and closes the TUN. If the tunnel process dies or hangs up on
its own, `ManagedTunnel.closed` is set and the iterator ends.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from trivpn.errors import ConfigError, FatalError, RemoteProtocolError, TrivpnError
from trivpn.manager import manager_pb2 as pb
from trivpn.manager.convert import tun_config_from_request
from trivpn.manager.rpc import Notice, Request
from trivpn.manager.speaker import RPCClosed, Speaker

__all__ = ["ManagedTunnel", "open_tunnel", "tunnel_command"]

log = logging.getLogger("trivpn.manager")
tunnel_log = logging.getLogger("trivpn.tunnel")

#: Bound on the whole Start (TLS handshake, push, network settings) as seen by the manager.
START_TIMEOUT = 90.0
STOP_TIMEOUT = 10.0
EXIT_TIMEOUT = 5.0
PEER_QUEUE = 64

_PY_LEVEL = {
    pb.Log.DEBUG: logging.DEBUG,
    pb.Log.INFO: logging.INFO,
    pb.Log.WARN: logging.WARNING,
    pb.Log.ERROR: logging.ERROR,
    pb.Log.CRITICAL: logging.CRITICAL,
    pb.Log.FATAL: logging.CRITICAL,
}


def tunnel_command(read_fd: int, write_fd: int, *, user: str | None, verbose: bool = False) -> list[str]:
    """The argv that starts a tunnel process speaking on the two fds."""
    argv = [sys.executable, "-m", "trivpn", "tunnel", "--rpc-read-fd", str(read_fd), "--rpc-write-fd", str(write_fd)]
    if user:
        argv += ["--user", user]
    if verbose:
        argv.append("-v")
    return argv


class _DNS:
    """DNS on the TUN through systemd-resolved, when the system has it; undone on exit."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.applied = False

    def apply(self, servers: Sequence[str], domains: Sequence[str]) -> None:
        if not servers and not domains:
            return
        tool = shutil.which("resolvectl")
        if tool is None or not os.path.isdir("/run/systemd/resolve"):
            log.warning(
                "DNS %s not applied: systemd-resolved is not running here",
                ", ".join([*servers, *domains]),
            )
            return
        for args in (["dns", self.ifname, *servers], ["domain", self.ifname, *domains]):
            if len(args) > 2:
                r = subprocess.run([tool, *args], capture_output=True, text=True, timeout=10, check=False)
                if r.returncode != 0:
                    raise ConfigError(f"resolvectl {args[0]} failed: {r.stderr.strip()[:200]}")
                self.applied = True

    def undo(self) -> None:
        tool = shutil.which("resolvectl")
        if self.applied and tool is not None:
            subprocess.run([tool, "revert", self.ifname], capture_output=True, timeout=10, check=False)
            self.applied = False


class ManagedTunnel:
    """A running tunnel process, seen from the manager."""

    def __init__(self, speaker: Speaker, ifname: str, process: trio.Process) -> None:
        self.speaker = speaker
        self.ifname = ifname
        self.process = process
        self.peer: pb.Peer | None = None
        self.closed = trio.Event()
        self.network_settings: pb.NetworkSettingsRequest | None = None
        self.dropped_updates = 0
        self._updates_s, self._updates_r = trio.open_memory_channel[pb.PeerUpdate](PEER_QUEUE)
        self._configurator: Any = None
        self._dns = _DNS(ifname)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def peer_updates(self) -> AsyncIterator[pb.PeerUpdate]:
        """Every PeerUpdate the tunnel pushes, until it goes away."""
        async for update in self._updates_r:
            yield update

    async def get_peer_update(self) -> pb.PeerUpdate:
        answer: pb.TunnelMessage = await self.speaker.request(
            pb.ManagerMessage(get_peer_update=pb.GetPeerUpdate())
        )
        if answer.WhichOneof("msg") != "peer_update":
            raise RemoteProtocolError("GetPeerUpdate answered with something else")
        return answer.peer_update

    async def stop(self) -> pb.StopResponse:
        """Ask the tunnel to disconnect; its reply is the last thing it sends."""
        answer: pb.TunnelMessage = await self.speaker.request(pb.ManagerMessage(stop=pb.StopRequest()))
        return answer.stop

    # ---------------------------------------------------------------- internals

    def _note_update(self, update: pb.PeerUpdate) -> None:
        for peer in update.upserted_peers:
            self.peer = peer
        try:
            self._updates_s.send_nowait(update)
        except trio.WouldBlock:
            self.dropped_updates += 1

    async def _apply(self, req: pb.NetworkSettingsRequest) -> None:
        from trivpn.tun.netconfig import NetConfigurator

        cfg = tun_config_from_request(req)
        if self._configurator is not None:
            self._configurator.undo()
        self._configurator = NetConfigurator(self.ifname)
        await trio.to_thread.run_sync(self._configurator.apply, cfg)
        dns = req.dns_settings
        await trio.to_thread.run_sync(self._dns.apply, list(dns.servers), list(dns.search_domains))
        self.network_settings = req
        log.info("network settings applied on %s: %s", self.ifname, ", ".join(self._configurator.applied) or "nothing")

    async def _serve(self) -> None:
        """Handle what the tunnel sends until it hangs up."""
        try:
            async with self.speaker.requests:
                async for batch in self.speaker.requests:
                    for item in batch:
                        await self._handle(item)
        finally:
            self._updates_s.close()
            self.closed.set()

    async def _handle(self, item: Request | Notice) -> None:
        msg = item.message
        if item.kind == "log":
            entry = msg.log
            names = ".".join(entry.logger_names[1:]) if entry.logger_names[:1] == ["trivpn"] else ".".join(entry.logger_names)
            extra = "".join(f" [{f.name}={f.value}]" for f in entry.fields if f.name != "time")
            tunnel_log.log(_PY_LEVEL.get(entry.level, logging.INFO), "%s%s", entry.message, extra, extra={"tunnel_logger": names})
        elif item.kind == "peer_update":
            self._note_update(msg.peer_update)
            if isinstance(item, Request):
                await self.speaker.reply(item, pb.ManagerMessage())
        elif item.kind == "network_settings" and isinstance(item, Request):
            try:
                await self._apply(msg.network_settings)
                answer = pb.NetworkSettingsResponse(success=True)
            except TrivpnError as exc:
                log.error("network settings refused: %s", exc)
                answer = pb.NetworkSettingsResponse(success=False, error_message=str(exc))
            except OSError as exc:
                log.error("network settings failed: %s", exc)
                answer = pb.NetworkSettingsResponse(success=False, error_message=f"{exc.strerror or exc}")
            try:
                await self.speaker.reply(item, pb.ManagerMessage(network_settings=answer))
            except RPCClosed:
                pass
        elif isinstance(item, Request):
            log.warning("unexpected request %s from the tunnel; empty reply", item.kind)
            await self.speaker.reply(item, pb.ManagerMessage())
        else:
            log.warning("ignoring a one-way %s from the tunnel", item.kind)

    def _undo(self) -> None:
        self._dns.undo()
        if self._configurator is not None:
            self._configurator.undo()
            self._configurator = None


def _read_profile(path: str | os.PathLike[str]) -> tuple[str, str]:
    from trivpn.profile.profile import load_profile

    p = Path(path)
    profile = load_profile(p)  # one-line ConfigError now rather than from the tunnel later
    for w in profile.warnings:
        log.debug("%s", w)
    return p.read_text(encoding="utf-8"), str(p.resolve())


@asynccontextmanager
async def open_tunnel(
    profile: str | os.PathLike[str],
    *,
    username: str = "",
    password: str = "",
    key_derivation: str = "auto",
    tunnel_user: str | None = "nobody",
    ifname: str = "tvpn%d",
    verbose: bool = False,
    start_timeout: float = START_TIMEOUT,
    tunnel_argv: Sequence[str] | None = None,
) -> AsyncIterator[ManagedTunnel]:
    """Bring a tunnel up through an unprivileged tunnel process; stop it on exit.

    Needs root (CAP_NET_ADMIN) for the TUN and its settings. `tunnel_user` is the account
    the tunnel process switches to when started as root (None: stay as we are).
    `tunnel_argv` replaces the command (it gets ``--rpc-read-fd R --rpc-write-fd W``
    appended), for front ends that ship their own tunnel binary.
    """
    from trivpn.tun.linux import TunPermissionError, open_tun

    if key_derivation not in ("auto", "ekm", "prf"):
        raise ConfigError(f"key derivation must be auto, ekm or prf, not {key_derivation!r}")
    text, source = _read_profile(profile)
    try:
        tun_fd, name = open_tun(ifname)
    except TunPermissionError as exc:
        raise ConfigError(str(exc)) from None
    to_tunnel_r, to_tunnel_w = os.pipe()
    from_tunnel_r, from_tunnel_w = os.pipe()
    child_fds: tuple[int, ...] = (to_tunnel_r, from_tunnel_w)
    process: trio.Process | None = None
    tunnel: ManagedTunnel | None = None
    try:
        if tunnel_argv is None:
            argv = tunnel_command(to_tunnel_r, from_tunnel_w, user=tunnel_user, verbose=verbose)
        else:
            argv = [*tunnel_argv, "--rpc-read-fd", str(to_tunnel_r), "--rpc-write-fd", str(from_tunnel_w)]
        process = await trio.lowlevel.open_process(
            argv, pass_fds=(*child_fds, tun_fd), start_new_session=True, stdin=subprocess.DEVNULL
        )
        for fd in child_fds:
            os.close(fd)
        child_fds = ()
        log.info("tunnel process %d started on %s", process.pid, name)
        stream = trio.StapledStream(
            trio.lowlevel.FdStream(to_tunnel_w), trio.lowlevel.FdStream(from_tunnel_r)
        )
        to_tunnel_w = from_tunnel_r = -1  # owned by the stream now
        speaker = Speaker(stream, "manager")
        tunnel = ManagedTunnel(speaker, name, process)
        try:
            # The protocol tasks are shielded: when our caller is cancelled, they must still
            # carry Stop and its answer. They are cancelled explicitly at the very end.
            protocol_scopes: list[trio.CancelScope] = []

            async def protected(fn: Any, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
                with trio.CancelScope(shield=True) as scope:
                    protocol_scopes.append(scope)
                    await fn(task_status=task_status)

            async def serve(task_status: trio.TaskStatus[None]) -> None:
                task_status.started()
                await tunnel._serve()

            async with trio.open_nursery() as nursery:
                try:
                    version = await nursery.start(protected, speaker.run)
                    log.debug("protocol version %s with tunnel %d", version, process.pid)
                    await nursery.start(protected, serve)
                    start = pb.StartRequest(
                        tunnel_file_descriptor=tun_fd,
                        profile_text=text,
                        profile_path=source,
                        username=username,
                        password=password,
                        key_derivation=key_derivation,
                        tunnel_name=name,
                    )
                    with trio.move_on_after(start_timeout) as scope:
                        try:
                            answer = await speaker.request(pb.ManagerMessage(start=start))
                        except RPCClosed as exc:
                            raise FatalError(f"the tunnel process ended during Start ({exc})") from None
                    if scope.cancelled_caught:
                        raise FatalError(f"the tunnel did not come up within {start_timeout:g} s")
                    if not answer.start.success:
                        raise FatalError(answer.start.error_message or "the tunnel failed to start")
                    yield tunnel
                finally:
                    with trio.CancelScope(shield=True):
                        if len(protocol_scopes) == 2 and not speaker.finished:
                            with trio.move_on_after(STOP_TIMEOUT):
                                try:
                                    await tunnel.stop()
                                except RPCClosed:
                                    pass
                            with trio.move_on_after(EXIT_TIMEOUT):  # relay the last logs
                                await tunnel.closed.wait()
                        for protocol_scope in protocol_scopes:
                            protocol_scope.cancel()
                        nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # one error, as `trivpn.connect` raises
            from trivpn.workers.manager import primary_error

            err = primary_error(group)
            if isinstance(err, Exception):
                raise err from None
            raise
    finally:
        with trio.CancelScope(shield=True):
            if process is not None:
                with trio.move_on_after(EXIT_TIMEOUT):
                    await process.wait()
                if process.returncode is None:
                    log.warning("tunnel process %d did not exit; killing it", process.pid)
                    process.kill()
                    await process.wait()
            if tunnel is not None:
                tunnel._undo()
            for fd in (*child_fds, to_tunnel_w, from_tunnel_r, tun_fd):
                if fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
