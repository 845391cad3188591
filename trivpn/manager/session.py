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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from trivpn.errors import ConfigError, FatalError, TrivpnError
from trivpn.manager import manager_pb2 as pb
from trivpn.manager.convert import dns_from_request, tun_config_from_request
from trivpn.manager.managercore import (
    ApplySettings,
    EmptyReply,
    ManagerCore,
    NotePeerUpdate,
    RelayLog,
)
from trivpn.manager.process import tunnel_identity
from trivpn.manager.rpc import Notice, Request
from trivpn.manager.speaker import RPCClosed, Speaker

__all__ = ["ManagedTunnel", "open_tunnel", "tunnel_command"]

log = logging.getLogger("trivpn.manager")
tunnel_log = logging.getLogger("trivpn.tunnel")

#: Bound on the whole Start (TLS handshake, push, network settings) as seen by the manager.
START_TIMEOUT = 90.0
STOP_TIMEOUT = 10.0
EXIT_TIMEOUT = 5.0
#: How long a tunnel that failed the handshake may take to obey SIGTERM before SIGKILL.
TERM_GRACE = 0.5
PEER_QUEUE = 64
#: How long a started tunnel's CONNECTED PeerUpdate is waited for before `open_tunnel` yields.
PEER_WAIT = 1.0

def tunnel_command(
    read_fd: int, write_fd: int, *, user: str | None = None, keep_user: bool = False, verbose: bool = False
) -> list[str]:
    """The argv that starts a tunnel process speaking on the two fds.

    The identity is always spelled out (`--user NAME` or `--keep-user`): leaving `--user`
    out meant the tunnel's own default, `nobody`, where "stay as we are" was documented.
    """
    argv = [sys.executable, "-m", "trivpn", "tunnel", "--rpc-read-fd", str(read_fd), "--rpc-write-fd", str(write_fd)]
    become = tunnel_identity(user, keep_user)
    argv += ["--keep-user"] if become is None else ["--user", become]
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
                self.applied = True  # from the first attempt: a timed-out call may have half-worked
                try:
                    r = subprocess.run([tool, *args], capture_output=True, text=True, timeout=10, check=False)
                except subprocess.TimeoutExpired:
                    raise ConfigError(f"resolvectl {args[0]} did not answer within 10 s") from None
                if r.returncode != 0:
                    raise ConfigError(f"resolvectl {args[0]} failed: {r.stderr.strip()[:200]}")

    def undo(self) -> None:
        """Best effort: it runs in open_tunnel's cleanup, before the TUN is closed, so a
        hung or vanished resolvectl must not raise (the TUN fd stayed open, and the error
        replaced the one that ended the run)."""
        tool = shutil.which("resolvectl")
        if self.applied and tool is not None:
            self.applied = False
            try:
                subprocess.run([tool, "revert", self.ifname], capture_output=True, timeout=10, check=False)
            except (OSError, subprocess.SubprocessError) as exc:
                log.warning("resolvectl revert %s failed: %s", self.ifname, exc)


class ManagedTunnel:
    """A running tunnel process, seen from the manager."""

    def __init__(self, speaker: Speaker, ifname: str, process: trio.Process) -> None:
        self.speaker = speaker
        self.ifname = ifname
        self.process = process
        self.core = ManagerCore()
        self.closed = trio.Event()
        self.network_settings: pb.NetworkSettingsRequest | None = None
        self.dropped_updates = 0
        self._updates_s, self._updates_r = trio.open_memory_channel[pb.PeerUpdate](PEER_QUEUE)
        self._configurator: Any = None
        self._dns = _DNS(ifname)
        self._peer_noted = trio.Event()  # set (and replaced) on every PeerUpdate handled

    async def _wait_connected(self) -> None:
        """Until `peer` is CONNECTED. The tunnel pushes that before it answers Start, but
        our reader hands the answer to `request()` at once while the push waits for `_serve`,
        so `open_tunnel` yielded a `peer` still CONNECTING (`trivpn manage`: "up on tvpn0: "
        without addresses)."""
        while self.core.peer is None or self.core.peer.state != pb.Peer.CONNECTED:
            await self._peer_noted.wait()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def peer(self) -> pb.Peer | None:
        """The latest peer state the tunnel reported."""
        return self.core.peer

    async def peer_updates(self) -> AsyncIterator[pb.PeerUpdate]:
        """Every PeerUpdate the tunnel pushes, until it goes away."""
        async for update in self._updates_r:
            yield update

    async def get_peer_update(self) -> pb.PeerUpdate:
        answer = await self.speaker.request(pb.ManagerMessage(get_peer_update=pb.GetPeerUpdate()))
        return self.core.check_peer_update(answer)

    async def stop(self) -> pb.StopResponse:
        """Ask the tunnel to disconnect; its reply is the last thing it sends."""
        answer: pb.TunnelMessage = await self.speaker.request(pb.ManagerMessage(stop=pb.StopRequest()))
        return answer.stop

    # ---------------------------------------------------------------- internals

    async def _apply(self, req: pb.NetworkSettingsRequest) -> None:
        from trivpn.tun.netconfig import NetConfigurator

        cfg = tun_config_from_request(req)
        servers, domains = dns_from_request(req)  # before anything changes
        if self._configurator is not None and req == self.network_settings:
            # a reconnect with the same settings (as `trivpn connect` does): undoing and
            # redoing them left the host without the tunnel's routes for a moment (a leak)
            log.info("network settings on %s unchanged", self.ifname)
            return
        if self._configurator is not None:
            # different settings: switched without a moment in which the tunnel's routes are
            # missing (NetConfigurator.reapply's unreachable stand-ins; undo-then-apply leaked)
            await trio.to_thread.run_sync(self._configurator.reapply, cfg)
        else:
            self._configurator = NetConfigurator(self.ifname)
            await trio.to_thread.run_sync(self._configurator.apply, cfg)
        await trio.to_thread.run_sync(self._dns.apply, servers, domains)
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
        action = self.core.receive(item)
        if isinstance(action, RelayLog):
            tunnel_log.log(action.level, "%s%s", action.message, action.extra, extra={"tunnel_logger": action.logger})
        elif isinstance(action, NotePeerUpdate):
            self._peer_noted.set()
            self._peer_noted = trio.Event()
            try:
                self._updates_s.send_nowait(action.update)
            except trio.WouldBlock:
                self.dropped_updates += 1
            if action.request is not None:
                await self._reply(action.request, pb.ManagerMessage())
        elif isinstance(action, ApplySettings):
            error: TrivpnError | OSError | None = None
            try:
                await self._apply(action.settings)
            except (TrivpnError, OSError) as exc:
                error = exc
            await self._reply(action.request, self.core.settings_answer(error))
        elif isinstance(action, EmptyReply):
            await self._reply(action.request, pb.ManagerMessage())

    async def _reply(self, request: Request, msg: pb.ManagerMessage) -> None:
        """Answer the tunnel; a tunnel that hung up meanwhile is no error here (the stream's
        end closes `closed` and the updates), as on the tunnel's side."""
        try:
            await self.speaker.reply(request, msg)
        except RPCClosed as exc:
            log.debug("reply to %d not sent: %s", request.msg_id, exc)

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


def _close_fds(*fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


async def _spawn(
    argv_for: Callable[[int, int], list[str]], tun_fd: int
) -> tuple[trio.Process, trio.abc.Stream]:
    """Start the tunnel process (`argv_for(read_fd, write_fd)`) on two new pipes, with the
    TUN fd inherited, in its own session; our ends of the pipes become the returned stream."""
    to_tunnel_r, to_tunnel_w = os.pipe()
    from_tunnel_r, from_tunnel_w = os.pipe()
    ours = [to_tunnel_w, from_tunnel_r]
    try:
        process = await trio.lowlevel.open_process(
            argv_for(to_tunnel_r, from_tunnel_w),
            pass_fds=(to_tunnel_r, from_tunnel_w, tun_fd),
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
        stream = trio.StapledStream(
            trio.lowlevel.FdStream(to_tunnel_w), trio.lowlevel.FdStream(from_tunnel_r)
        )
        ours = []  # owned by the stream now
    finally:
        _close_fds(to_tunnel_r, from_tunnel_w, *ours)
    return process, stream


async def _reap(process: trio.Process, *, spoke: bool = True) -> None:
    """Wait (bounded) for the tunnel process to exit, then kill it.

    A tunnel that never completed the handshake (`spoke` False) was sent no Stop and has no
    reason to exit: waiting EXIT_TIMEOUT for it only delayed the error. It gets SIGTERM at
    once, and SIGKILL if it is still there after TERM_GRACE.
    """
    if not spoke and process.returncode is None:
        process.terminate()
        with trio.move_on_after(TERM_GRACE):
            await process.wait()
    else:
        with trio.move_on_after(EXIT_TIMEOUT):
            await process.wait()
    if process.returncode is None:
        log.warning("tunnel process %d did not exit; killing it", process.pid)
        process.kill()
        await process.wait()


@asynccontextmanager
async def _protocol(tunnel: ManagedTunnel, start: pb.ManagerMessage, start_timeout: float) -> AsyncIterator[None]:
    """Speak to the tunnel: handshake, serve it, Start (bounded); on exit Stop (bounded)."""
    speaker = tunnel.speaker
    # The protocol tasks are shielded: when our caller is cancelled, they must still
    # carry Stop and its answer. They are cancelled explicitly at the very end, so their
    # scopes exist before the tasks run, and the tasks are started with start_soon: a task
    # shielded inside `nursery.start` that is cancelled before `started()` stays in
    # start()'s own nursery, and start() (so this function, so its `finally`) waits for it
    # for ever.
    protocol_scopes = [trio.CancelScope(shield=True), trio.CancelScope(shield=True)]

    async def protected(scope: trio.CancelScope, fn: Callable[[], Awaitable[None]]) -> None:
        with scope:
            await fn()

    async with trio.open_nursery() as nursery:
        try:
            nursery.start_soon(protected, protocol_scopes[0], speaker.run)
            nursery.start_soon(protected, protocol_scopes[1], tunnel._serve)  # waits for requests
            version = await speaker.wait_ready()
            log.debug("protocol version %s with tunnel %d", version, tunnel.pid)
            answer = None
            with trio.move_on_after(start_timeout) as scope:
                try:
                    answer = await speaker.request(start)
                except RPCClosed as exc:
                    raise FatalError(f"the tunnel process ended during Start ({exc})") from None
            tunnel.core.check_start(answer, timed_out=scope.cancelled_caught, start_timeout=start_timeout)
            with trio.move_on_after(PEER_WAIT):  # bounded: a push may have been dropped
                await tunnel._wait_connected()
            yield
        finally:
            with trio.CancelScope(shield=True):
                if speaker.version is not None and not speaker.finished:
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


@asynccontextmanager
async def open_tunnel(
    profile: str | os.PathLike[str],
    *,
    username: str = "",
    password: str = "",
    key_derivation: str = "auto",
    tunnel_user: str | None = None,
    keep_user: bool = False,
    ifname: str = "tvpn%d",
    verbose: bool = False,
    start_timeout: float = START_TIMEOUT,
    tunnel_argv: Sequence[str] | None = None,
) -> AsyncIterator[ManagedTunnel]:
    """Bring a tunnel up through an unprivileged tunnel process; stop it on exit.

    Needs root (CAP_NET_ADMIN) for the TUN and its settings. `tunnel_user` is the account
    the tunnel process switches to when started as root (None, the default: `nobody`; an
    empty name is a ConfigError). Only `keep_user=True` (with `tunnel_user=None`) keeps it as we
    are, which as root means a root process parsing what the network sends.
    `tunnel_argv` replaces the command (it gets ``--rpc-read-fd R --rpc-write-fd W``
    appended and decides about its user itself), for front ends that ship their own
    tunnel binary.
    """
    from trivpn.tun.linux import TunPermissionError, open_tun

    if key_derivation not in ("auto", "ekm", "prf"):
        raise ConfigError(f"key derivation must be auto, ekm or prf, not {key_derivation!r}")
    tunnel_identity(tunnel_user, keep_user)  # one line now, before the TUN exists
    text, source = _read_profile(profile)
    try:
        tun_fd, name = open_tun(ifname)
    except TunPermissionError as exc:
        raise ConfigError(str(exc)) from None
    process: trio.Process | None = None
    tunnel: ManagedTunnel | None = None
    try:

        def argv_for(read_fd: int, write_fd: int) -> list[str]:
            if tunnel_argv is None:
                return tunnel_command(read_fd, write_fd, user=tunnel_user, keep_user=keep_user, verbose=verbose)
            return [*tunnel_argv, "--rpc-read-fd", str(read_fd), "--rpc-write-fd", str(write_fd)]

        process, stream = await _spawn(argv_for, tun_fd)
        log.info("tunnel process %d started on %s", process.pid, name)
        tunnel = ManagedTunnel(Speaker(stream, "manager"), name, process)
        start = tunnel.core.start_message(
            tun_fd=tun_fd, profile_text=text, profile_path=source, username=username,
            password=password, key_derivation=key_derivation, tunnel_name=name,
        )
        try:
            async with _protocol(tunnel, start, start_timeout):
                yield tunnel
        except BaseExceptionGroup as group:  # one error, as `trivpn.connect` raises
            from trivpn.workers.manager import primary_error

            err = primary_error(group)
            if isinstance(err, Exception):
                raise err from None
            raise
    finally:
        with trio.CancelScope(shield=True):
            if process is not None:
                spoke = tunnel is not None and tunnel.speaker.version is not None
                await _reap(process, spoke=spoke)
            if tunnel is not None:
                tunnel._undo()
            _close_fds(tun_fd)
