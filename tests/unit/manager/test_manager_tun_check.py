"""Issue 15: the tunnel process checks the fd it is told to use as TUN, and exits 1 with
the reason on stderr when the manager's protocol stream is broken (before: exit 0, the
reason only in a log message sent over that very stream)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest
import trio
import trio.testing
from helpers.manager_peer import frame
from helpers.require import in_ci

from trivpn.errors import ConfigError, FatalError
from trivpn.manager import manager_pb2 as pb
from trivpn.manager.process import serve_manager, stream_fds
from trivpn.manager.tunnel import check_tun_fd

LIMIT = 20
HEADER = b"trivpn manager 1.0\n"


def test_a_pipe_is_not_a_tun_device() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(ConfigError, match=f"tunnel_file_descriptor {r} is not a TUN device"):
            check_tun_fd(r)
    finally:
        os.close(r)
        os.close(w)


def test_an_rpc_fd_is_refused_as_the_tun() -> None:
    """Before: the RPC read fd was accepted, and the TUN reader stole the manager's frames."""
    r, w = os.pipe()
    try:
        with pytest.raises(ConfigError, match="is the RPC stream"):
            check_tun_fd(r, frozenset({r, w}))
    finally:
        os.close(r)
        os.close(w)


def test_closed_or_standard_fds_are_refused() -> None:
    with pytest.raises(ConfigError, match="need an inherited fd >= 3"):
        check_tun_fd(1)
    with pytest.raises(ConfigError, match="not open"):
        check_tun_fd(1000)


def test_a_real_tun_fd_is_accepted_with_its_kernel_name() -> None:
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        reason = "creating a TUN device needs root and /dev/net/tun"
        if in_ci():
            pytest.fail(f"CI=true, so not skipping: {reason}", pytrace=False)
        pytest.skip(f"NOT RUN: {reason}")
    from trivpn.tun.linux import open_tun

    fd, name = open_tun("tvchk%d")
    try:
        assert check_tun_fd(fd) == name
    finally:
        os.close(fd)


async def test_rpc_fds_of_stapled_pipes_are_known() -> None:
    r, w = os.pipe()
    stream = trio.StapledStream(trio.lowlevel.FdStream(w), trio.lowlevel.FdStream(r))
    assert stream_fds(stream) == {r, w}
    await stream.aclose()


@pytest.mark.parametrize(
    ("after_header", "reason"),
    [
        (b"\x00\x00\x00\x00", "zero-length message"),
        (b"\x7f\x00\x00\x00", "exceeds"),
        (b"\x00\x00\x00\x03\xff\xff\xff", ""),  # corrupt protobuf
        (b"\x00\x00\x00\x40abc", "hung up inside a frame"),
    ],
)
async def test_broken_manager_stream_raises_with_the_reason(
    after_header: bytes, reason: str
) -> None:
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:

            async def manager() -> None:
                await b.send_all(HEADER + after_header)
                await b.send_eof()
                while await b.receive_some(65536):  # the tunnel's header and logs
                    pass

            nursery.start_soon(manager)
            with pytest.raises(FatalError, match=f"protocol stream is broken: .*{reason}"):
                await serve_manager(a)


async def test_ordinary_hang_up_is_not_an_error() -> None:
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:

            async def manager() -> None:
                await b.send_all(
                    HEADER
                    + frame(
                        pb.ManagerMessage(rpc=pb.RPC(msg_id=1), get_peer_update=pb.GetPeerUpdate())
                    )
                )
                await b.send_eof()
                while await b.receive_some(65536):
                    pass

            nursery.start_soon(manager)
            await serve_manager(a)  # returns: the manager simply left


def test_tunnel_process_exits_1_with_the_reason_on_stderr() -> None:
    """The real `trivpn tunnel` over two pipes: a zero-length frame (before: exit 0)."""
    to_tunnel_r, to_tunnel_w = os.pipe()
    from_tunnel_r, from_tunnel_w = os.pipe()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trivpn",
            "tunnel",
            "--rpc-read-fd",
            str(to_tunnel_r),
            "--rpc-write-fd",
            str(from_tunnel_w),
            "--keep-user",
        ],
        pass_fds=(to_tunnel_r, from_tunnel_w),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(to_tunnel_r)
    os.close(from_tunnel_w)
    try:
        os.write(to_tunnel_w, HEADER + b"\x00\x00\x00\x00")
        os.close(to_tunnel_w)
        _, err = proc.communicate(timeout=LIMIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(from_tunnel_r)
    assert proc.returncode == 1
    assert err.decode().strip().splitlines()[-1] == (
        "trivpn: error: the manager's protocol stream is broken: zero-length message"
    )


def test_tunnel_speaking_on_its_stdout_logs_to_stderr() -> None:
    """`--rpc-write-fd 1` with -v: the tunnel's own log line after its header went into the
    protocol stream (as bytes of the first "frame"), and the manager hung up on it."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    argv = [sys.executable, "-m", "trivpn", "tunnel", "--rpc-read-fd", "0", "--rpc-write-fd", "1", "--keep-user", "-v"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(HEADER + frame(pb.ManagerMessage(rpc={"msg_id": 1}, stop={})))
        proc.stdin.flush()  # stdin stays open: the answer must come before we hang up
        assert proc.stdout.readline() == b"trivpn tunnel 1.0\n"
        while True:  # only whole frames follow, until the Stop answer
            (n,) = struct.unpack(">I", proc.stdout.read(4))
            msg = pb.TunnelMessage.FromString(proc.stdout.read(n))
            if msg.WhichOneof("msg") == "stop":
                break
        assert msg.rpc.response_to == 1
        _, err = proc.communicate(timeout=LIMIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and b"protocol version 1.0" in err
