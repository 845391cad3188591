"""The tunnel process: open the RPC stream, drop root, serve one manager, exit.

Dropping privileges happens in-process, after every module the engine needs is imported:
the interpreter and its packages may live where the unprivileged user cannot read (a
0700 home directory), so nothing may be imported lazily after the switch. The TUN device
and the RPC pipes stay usable because they are already-open file descriptors.
"""

from __future__ import annotations

import importlib
import logging
import os

import trio

from trivpn.errors import ConfigError, FatalError

__all__ = [
    "DEFAULT_TUNNEL_USER",
    "PRELOAD",
    "capabilities",
    "drop_privileges",
    "open_rpc_stream",
    "serve_manager",
    "stream_fds",
    "tunnel_identity",
]

log = logging.getLogger("trivpn.manager")

#: Who a tunnel process started as root becomes unless told otherwise: it parses what the
#: network sends, so by default it must not keep root.
DEFAULT_TUNNEL_USER = "nobody"

#: Everything the tunnel may import after it dropped root (see the module docstring).
PRELOAD = (
    "encodings.idna",
    "encodings.ascii",
    "trivpn.client",
    "trivpn.engine",
    "trivpn.session.config",
    "trivpn.session.netsettings",
    "trivpn.session.reconnect",
    "trivpn.api",
    "trivpn.tun.linux",
    "trivpn.tun.service",
    "trivpn.profile.profile",
    "trivpn.profile.push",
    "trivpn.workers.manager",
    "trivpn.datachannel.crypto",
    "trivpn.datachannel.service",
    "trivpn.tlssession.tls",
    "trivpn.tlssession.keys",
    "trivpn.tlssession.service",
    "trivpn.manager.tunnel",
    "trivpn.manager.convert",
    "OpenSSL._util",
    "google.protobuf.timestamp_pb2",
)


def capabilities() -> dict[str, int]:
    """The CapInh/CapPrm/CapEff/CapBnd/CapAmb masks of this process (Linux)."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Cap"):
                    key, _, value = line.partition(":")
                    out[key] = int(value.strip(), 16)
    except OSError:
        pass
    return out


def tunnel_identity(user: str | None, keep_user: bool) -> str | None:
    """The account a tunnel process started as root switches to; None means stay as it is.

    Staying must be asked for by name (`keep_user`): a missing user (None) is the safe
    default, and an empty one (an unset variable, say) is an error, not a quiet "stay root".
    """
    if keep_user:
        if user is not None:
            raise ConfigError("give a user for the tunnel process or keep its own user, not both")
        return None
    if user is None:
        return DEFAULT_TUNNEL_USER
    if not user.strip():
        raise ConfigError(
            f"empty user name for the tunnel process: leave it out for {DEFAULT_TUNNEL_USER}; "
            "keeping the process's own user must be asked for (trivpn tunnel --keep-user, "
            "open_tunnel(keep_user=True))"
        )
    return user


def drop_privileges(user: str) -> tuple[int, int]:
    """Become `user` for good (all groups, uids and capabilities); returns (uid, gid)."""
    import pwd

    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"no such user {user!r} to run the tunnel as") from None
    if pw.pw_uid == 0:
        raise ConfigError("the tunnel must not run as root: choose another --user")
    for name in PRELOAD:
        importlib.import_module(name)
    os.chdir("/")
    os.setgroups([])
    os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
    os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)  # also clears every capability
    os.environ["HOME"] = "/"
    if os.getresuid() != (pw.pw_uid,) * 3 or os.getresgid() != (pw.pw_gid,) * 3:
        raise FatalError("could not drop privileges")
    caps = capabilities()
    if caps.get("CapEff", 0) or caps.get("CapPrm", 0):
        raise FatalError("capabilities remain after dropping privileges")
    return pw.pw_uid, pw.pw_gid


async def open_rpc_stream(read_fd: int | None, write_fd: int | None, socket_path: str | None) -> trio.abc.Stream:
    """The manager's stream: two inherited pipe fds, or a Unix socket it listens on."""
    if socket_path:
        try:
            return await trio.open_unix_socket(socket_path)
        except OSError as exc:
            raise ConfigError(f"cannot connect to {socket_path}: {exc.strerror or exc}") from None
    if read_fd is None or write_fd is None:
        raise ConfigError("give --rpc-read-fd and --rpc-write-fd, or --rpc-socket")
    for fd in (read_fd, write_fd):
        try:
            os.fstat(fd)
        except (OSError, OverflowError):  # OverflowError: beyond a C int (a typo)
            raise ConfigError(f"fd {fd} is not open in the tunnel process") from None
    if read_fd == write_fd:
        raise ConfigError("--rpc-read-fd and --rpc-write-fd must differ")
    return trio.StapledStream(trio.lowlevel.FdStream(write_fd), trio.lowlevel.FdStream(read_fd))


def stream_fds(stream: trio.abc.Stream) -> frozenset[int]:
    """The descriptors under an RPC stream (pipes stapled together, or a socket)."""
    parts: list[object] = [stream]
    if isinstance(stream, trio.StapledStream):
        parts = [stream.send_stream, stream.receive_stream]
    fds: set[int] = set()
    for part in parts:
        if isinstance(part, trio.lowlevel.FdStream):
            fds.add(part.fileno())
        elif isinstance(part, trio.SocketStream):
            fds.add(part.socket.fileno())
    return frozenset(fds)


async def serve_manager(
    stream: trio.abc.Stream, *, verbose: bool = False, rpc_fds: frozenset[int] = frozenset()
) -> None:
    """Handshake, forward logs, serve requests until Stop or hang-up.

    A broken stream from the manager (bad frame length, corrupt message, hang-up inside a
    frame) raises FatalError once the log forwarding is undone, so the reason reaches
    stderr and the exit status is 1 (the manager cannot be told any more).
    """
    from trivpn.manager.speaker import Speaker
    from trivpn.manager.tunnel import RPCLogHandler, Tunnel

    speaker = Speaker(stream, "tunnel")
    rpc_fds = rpc_fds | stream_fds(stream)
    async with trio.open_nursery() as nursery:
        await nursery.start(speaker.run)
        root = logging.getLogger("trivpn")
        handler = RPCLogHandler(speaker, trio.lowlevel.current_trio_token())
        saved = (root.handlers[:], root.level, root.propagate)
        root.handlers[:] = [handler]
        root.setLevel(logging.DEBUG if verbose else logging.INFO)
        root.propagate = False
        try:
            await Tunnel(speaker, rpc_fds=rpc_fds).serve()
            with trio.move_on_after(2.0):  # let the Stop reply (the last frame) leave
                await speaker.wait_closed()
        finally:
            root.handlers[:], level, root.propagate = saved
            root.setLevel(level)
            nursery.cancel_scope.cancel()
    if speaker.protocol_error is not None:
        raise FatalError(f"the manager's protocol stream is broken: {speaker.protocol_error}")
