"""`sudo trivpn demo`: a whole VPN on one machine, set up, exercised and removed.

Theory of operation
-------------------
Everything the demo makes is owned by one `Demo` object and removed in its `cleanup`,
which runs in a shielded, time-bounded scope whatever ended the run (success, a failed
step, Ctrl+C, SIGTERM): the two network namespaces it created (with every process still
inside them), and its temporary directory (PKI, configs, logs).

Traffic stays inside the two namespaces: they are joined by a veth pair that never exists
in the host's namespace, the server listens on its end of that link, and the client's
routes only exist in the client namespace. The product code does not use trivpn.testing:
the few `ip` commands needed are here.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import field
from pathlib import Path

import trio

from trivpn.errors import ConfigError, TrivpnError
from trivpn.records import dataclass

SERVER_LINK, CLIENT_LINK, LINK_PREFIX = "10.99.0.1", "10.99.0.2", 24
SUBNET, SERVER_TUNNEL = "10.8.0.0/24", "10.8.0.1"
SERVER_NAME, CLIENT_NAME = "demo-server.trivpn", "demo-client"
NS_PREFIX = "trivpn-demo-"
STEP_TIMEOUT = 30.0
CLEANUP_TIMEOUT = 15.0
POLL = 0.1
_UP = re.compile(r"tunnel up[^:]*: (\d+\.\d+\.\d+\.\d+)/\d+")
_PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")
_PING_RTT = re.compile(r"= [\d.]+/([\d.]+)/")


class DemoError(TrivpnError):
    """A demo step failed; the message says which and why."""


def say(text: str) -> None:
    print(text, flush=True)


async def _run(argv: list[str], *, limit: float = STEP_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    """Run a short command to its end, at most `limit` seconds (then trio kills it)."""
    try:
        with trio.fail_after(limit):
            r: subprocess.CompletedProcess[bytes] = await trio.run_process(
                argv, capture_stdout=True, capture_stderr=True, check=False
            )
    except trio.TooSlowError:
        raise DemoError(f"{' '.join(argv[:6])} took longer than {limit:.0f} s") from None
    return r


async def _must(argv: list[str]) -> str:
    r = await _run(argv)
    if r.returncode != 0:
        raise DemoError(f"{' '.join(argv)}: {r.stderr.decode(errors='replace').strip()[:300]}")
    return r.stdout.decode(errors="replace")


@dataclass
class Demo:
    """The namespaces, processes and files of one demo run."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    workdir: Path | None = None
    namespaces: list[str] = field(default_factory=list)
    processes: list[trio.Process] = field(default_factory=list)
    keep: bool = False

    @property
    def server_ns(self) -> str:
        return f"{NS_PREFIX}{self.tag}-server"

    @property
    def client_ns(self) -> str:
        return f"{NS_PREFIX}{self.tag}-client"

    def in_ns(self, ns: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    async def make_namespaces(self) -> None:
        for ns in (self.server_ns, self.client_ns):
            await _must(["ip", "netns", "add", ns])
            self.namespaces.append(ns)
            await _must(["ip", "-n", ns, "link", "set", "lo", "up"])
        # made inside the namespaces: the veth never appears on the host
        await _must(["ip", "-n", self.server_ns, "link", "add", "veth0", "type", "veth",
                     "peer", "name", "veth0", "netns", self.client_ns])
        for ns, addr in ((self.server_ns, SERVER_LINK), (self.client_ns, CLIENT_LINK)):
            await _must(["ip", "-n", ns, "addr", "add", f"{addr}/{LINK_PREFIX}", "dev", "veth0"])
            await _must(["ip", "-n", ns, "link", "set", "veth0", "up"])

    async def start(self, ns: str, argv: list[str], log: Path) -> trio.Process:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            proc = await trio.lowlevel.open_process(
                self.in_ns(ns, argv), stdin=subprocess.DEVNULL, stdout=fd, stderr=fd
            )
        finally:
            os.close(fd)
        self.processes.append(proc)
        return proc

    async def wait_for(self, proc: trio.Process, log: Path, pattern: re.Pattern[str], what: str) -> re.Match[str]:
        """Poll `log` until `pattern` shows up (bounded); a dead process ends the wait early."""
        with trio.move_on_after(STEP_TIMEOUT):
            while True:
                text = await trio.Path(log).read_text(errors="replace")
                found = pattern.search(text)
                if found:
                    return found
                if proc.returncode is not None:
                    break
                await trio.sleep(POLL)
        tail = "\n".join((await trio.Path(log).read_text(errors="replace")).splitlines()[-5:])
        raise DemoError(f"{what} did not come up; last lines of its log:\n{tail}")

    async def cleanup(self) -> None:
        """Stop the processes, delete the namespaces, remove the files (bounded, shielded)."""
        with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT):
            for proc in reversed(self.processes):
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in reversed(self.processes):
                with trio.move_on_after(5):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            for ns in reversed(self.namespaces):
                r = await _run(["ip", "netns", "pids", ns], limit=5)
                for pid in r.stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                await _run(["ip", "netns", "del", ns], limit=5)
            if self.workdir is not None and not self.keep:
                await trio.to_thread.run_sync(shutil.rmtree, self.workdir, True)


def _check_machine() -> None:
    if os.geteuid() != 0:
        raise ConfigError("trivpn demo creates network namespaces and TUN devices: run it with sudo")
    if shutil.which("ip") is None:
        raise ConfigError("trivpn demo needs iproute2's 'ip' command (apt-get install iproute2)")
    if shutil.which("ping") is None:
        raise ConfigError("trivpn demo needs 'ping' (apt-get install iputils-ping)")
    if not os.path.exists("/dev/net/tun"):
        raise ConfigError("/dev/net/tun is missing: this machine cannot make TUN devices")


async def _ping(demo: Demo) -> bool:
    r = await _run(demo.in_ns(demo.client_ns, ["ping", "-c", "5", "-i", "0.2", "-W", "2", SERVER_TUNNEL]))
    out = r.stdout.decode(errors="replace")
    counts, rtt = _PING_SUMMARY.search(out), _PING_RTT.search(out)
    sent, got = (int(counts.group(1)), int(counts.group(2))) if counts else (5, 0)
    avg = f", {float(rtt.group(1)):.2f} ms on average" if rtt else ""
    say(f"5. ping from the client to the server's tunnel address {SERVER_TUNNEL}: {got} of {sent} replies{avg}")
    return got > 0


async def _iperf(demo: Demo, seconds: int) -> None:
    if shutil.which("iperf3") is None:
        say("6. iperf3 is not installed, so no throughput test (apt-get install iperf3)")
        return
    assert demo.workdir is not None
    server = await demo.start(demo.server_ns, ["iperf3", "-s", "-1", "--forceflush", "-B", SERVER_TUNNEL],
                              demo.workdir / "iperf3-server.log")
    try:
        await demo.wait_for(server, demo.workdir / "iperf3-server.log", re.compile("Server listening"), "iperf3 -s")
    except DemoError as exc:
        say(f"6. iperf3 could not start its server, no throughput test: {exc}")
        return
    r = await _run(demo.in_ns(demo.client_ns, ["iperf3", "-c", SERVER_TUNNEL, "-t", str(seconds), "-J"]),
                   limit=seconds + STEP_TIMEOUT)
    try:
        end = json.loads(r.stdout)["end"]
        sent = end["sum_sent"]["bits_per_second"] / 1e6
        got = end["sum_received"]["bits_per_second"] / 1e6
    except (ValueError, KeyError, TypeError):
        say(f"6. iperf3 through the tunnel failed: {r.stderr.decode(errors='replace').strip()[:200]}")
        return
    say(f"6. iperf3 (TCP) through the tunnel for {seconds} s: {got:.0f} Mbit/s received ({sent:.0f} Mbit/s sent)")


async def run_demo(*, iperf_seconds: int = 3, keep: bool = False) -> int:
    from trivpn.pki import ops

    _check_machine()
    demo = Demo(keep=keep)
    python = [sys.executable, "-m", "trivpn"]
    say("trivpn demo: a VPN server and a client on this machine, each in its own network namespace")
    try:
        demo.workdir = Path(await trio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="trivpn-demo-")))
        pki = demo.workdir / "pki"
        await trio.to_thread.run_sync(lambda: ops.init(pki, name=SERVER_NAME, subnet=SUBNET))
        issued = await trio.to_thread.run_sync(lambda: ops.client(pki, CLIENT_NAME, remote=SERVER_LINK))
        say(f"1. made a PKI with 'trivpn pki' in {pki}: a CA, the server's certificate and "
            f"server.conf, and the client profile {issued.profile.name}")
        await demo.make_namespaces()
        say(f"2. created the namespaces {demo.server_ns} ({SERVER_LINK}) and {demo.client_ns} "
            f"({CLIENT_LINK}), joined by a virtual cable")
        t0 = trio.current_time()
        serve_log = demo.workdir / "serve.log"
        serve = await demo.start(demo.server_ns, [*python, "serve", str(pki / "server.conf")], serve_log)
        await demo.wait_for(serve, serve_log, re.compile("Initialization Sequence Completed"), "trivpn serve")
        say(f"3. started 'trivpn serve server.conf' in the server namespace: listening on "
            f"{SERVER_LINK}:1194/udp after {trio.current_time() - t0:.1f} s")
        t0 = trio.current_time()
        connect_log = demo.workdir / "connect.log"
        connect = await demo.start(demo.client_ns, [*python, "connect", str(issued.profile)], connect_log)
        up = await demo.wait_for(connect, connect_log, _UP, "trivpn connect")
        say(f"4. started 'trivpn connect {issued.profile.name}' in the client namespace: TLS "
            f"handshake done, tunnel up with address {up.group(1)} after "
            f"{trio.current_time() - t0:.1f} s")
        ok = await _ping(demo)
        if ok and iperf_seconds > 0:
            await _iperf(demo, iperf_seconds)
        elif ok:
            say("6. no throughput test (--iperf-seconds 0)")
        elif not ok:
            say("   no replies: see the logs above; the demo failed")
    except BaseException:
        say("stopping: removing everything the demo made")
        raise
    finally:
        await demo.cleanup()
    kept = f"; kept {demo.workdir}" if keep else f" and {demo.workdir}"
    say(f"7. stopped the client and the server, deleted both namespaces{kept}")
    if ok:
        say("Everything above went through an encrypted OpenVPN tunnel. Next: 'trivpn pki init' "
            "for your own server, then 'trivpn serve' and 'trivpn connect' (see README.md).")
    return 0 if ok else 1
