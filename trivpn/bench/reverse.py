"""`python -m trivpn.bench reverse`: the reverse tunnel against `ssh -R` and direct, loopback.

One run starts, on 127.0.0.1 only: an iperf3 server, an HTTP origin and an echo service
(the two last are small trio servers run as child processes of this module), then
`trivpn relay` plus one `trivpn expose` per service, and a private OpenSSH server
(Debian's sshd, with throw-away keys in a temporary directory) with one `ssh -R` per
service. It measures, for direct / trivpn / ssh -R:

* throughput: iperf3, single stream, both directions (`-R`);
* added latency: fixed-rate HTTP/1.1 requests (default 1,000/s over 16 keep-alive
  connections), p50 and p99 of the request time, minus direct;
* concurrent streams: K connections held open through trivpn at once, each checked with an
  echo, and the RSS growth of the relay and expose processes per stream.

Every loop is bounded by a count and a deadline; every child is killed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
TOKEN = "bench-token-0123456789"  # trivpn relay/expose want at least 16 bytes
START_TIMEOUT = 15.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _free_range(n: int) -> int:
    """First of `n` consecutive ports that are all free now (for the relay's public range)."""
    for _ in range(100):
        base = _free_port()
        if base + n > 65535:
            continue
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind((HOST, base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


def _wait_port(port: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout:g} s")


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ------------------------------------------------------------------ child services


def _serve(kind: str, port: int) -> int:
    """Run one origin service in this process (a child of the benchmark)."""
    import trio

    response = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nhello, bench\n"
    )

    async def http(stream: trio.SocketStream) -> None:
        buf = b""
        try:
            async with stream:
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                    n = buf.count(b"\r\n\r\n")
                    if n:
                        buf = buf[buf.rfind(b"\r\n\r\n") + 4 :]
                        await stream.send_all(response * n)
        except trio.BrokenResourceError:
            pass

    async def echo(stream: trio.SocketStream) -> None:
        try:
            async with stream:
                async for data in stream:
                    await stream.send_all(data)
        except trio.BrokenResourceError:
            pass

    handler = http if kind == "http" else echo
    trio.run(trio.serve_tcp, handler, port)
    return 0


class Children:
    def __init__(self, workdir: Path) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workdir = workdir

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the child
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)


def _start_sshd(ch: Children, work: Path) -> tuple[int, Path]:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd) or shutil.which("ssh") is None:
        raise RuntimeError("OpenSSH server/client not installed (apt-get install openssh-server)")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    for name in ("host", "client"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / name)], check=True
        )
    (work / "authorized_keys").write_bytes((work / "client.pub").read_bytes())
    port = _free_port()
    (work / "sshd_config").write_text(
        f"ListenAddress {HOST}\nPort {port}\nHostKey {work / 'host'}\nPidFile {work / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {work / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "AllowTcpForwarding yes\nGatewayPorts no\nClientAliveInterval 10\n"
    )
    ch.start("sshd", [sshd, "-D", "-e", "-f", str(work / "sshd_config")])
    _wait_port(port)
    return port, work / "client"


def _ssh_forward(ch: Children, ssh_port: int, key: Path, forwards: list[tuple[int, int]]) -> None:
    argv = [
        "ssh", "-N", "-i", str(key), "-p", str(ssh_port),
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR",
    ]  # fmt: skip
    for public, local in forwards:
        argv += ["-R", f"{HOST}:{public}:{HOST}:{local}"]
    ch.start("ssh", [*argv, f"{os.environ.get('USER', 'root')}@{HOST}"])
    for public, _ in forwards:
        _wait_port(public)


# --------------------------------------------------------------------- measurements


def _iperf(port: int, seconds: float, reverse: bool) -> float:
    argv = ["iperf3", "-c", HOST, "-p", str(port), "-t", f"{seconds:g}", "-J"]
    if reverse:
        argv.append("-R")
    for _ in range(10):  # the server may still be finishing the previous test
        r = subprocess.run(argv, capture_output=True, timeout=seconds + 30)
        data = json.loads(r.stdout or b"{}")
        if "busy" not in str(data.get("error", "")):
            break
        time.sleep(1.0)
    if "error" in data or r.returncode != 0:
        raise RuntimeError(
            f"iperf3 failed on port {port}: {data.get('error', r.stderr.decode()[-200:])}"
        )
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e6


def _latency(port: int, rate: int, seconds: float, conns: int) -> dict[str, float]:
    """Fixed-rate GETs over keep-alive connections; request times in ms."""
    import trio

    times: list[float] = []
    errors = 0

    async def worker(i: int, start: float) -> None:
        nonlocal errors
        interval = conns / rate
        stream = await trio.open_tcp_stream(HOST, port)
        async with stream:
            t_next = start + i * (1 / rate)
            end = start + seconds
            while t_next < end:
                await trio.sleep_until(t_next)
                t0 = trio.current_time()
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                got = b""
                with trio.move_on_after(5):
                    while not got.endswith(b"hello, bench\n"):
                        data = await stream.receive_some(4096)
                        if not data:
                            break
                        got += data
                if got.endswith(b"hello, bench\n"):
                    times.append((trio.current_time() - t0) * 1000)
                else:
                    errors += 1
                    return
                t_next += interval

    async def main() -> None:
        start = trio.current_time() + 0.2
        async with trio.open_nursery() as n:
            for i in range(conns):
                n.start_soon(worker, i, start)

    trio.run(main)
    times.sort()
    if not times:
        raise RuntimeError(f"no HTTP reply on port {port}")
    return {
        "requests": len(times),
        "errors": errors,
        "p50_ms": statistics.median(times),
        "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))],
        "rate": len(times) / seconds,
    }


def _pingpong(port: int, count: int, gap: float) -> dict[str, float]:
    """1-byte round trips through an echo service, back to back or paced `gap` s apart (ms)."""
    times: list[float] = []
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            if gap:
                time.sleep(gap)
            t0 = time.perf_counter()
            s.sendall(b"x")
            if s.recv(16) != b"x":
                raise RuntimeError(f"echo on port {port} answered wrongly")
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"p50_ms": statistics.median(times), "p99_ms": times[int(len(times) * 0.99)]}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process used so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _streams(port: int, count: int, pids: dict[str, int]) -> dict[str, Any]:
    """Hold `count` echo streams open at once; RSS growth per stream of each process."""
    import trio

    before = {k: _rss_kib(p) for k, p in pids.items()}
    ok = 0
    after: dict[str, int] = {}

    async def main() -> None:
        nonlocal ok, after
        streams: list[trio.SocketStream] = []
        try:
            with trio.fail_after(120):
                for _ in range(count):
                    streams.append(await trio.open_tcp_stream(HOST, port))
                for i, s in enumerate(streams):
                    await s.send_all(b"%08d" % i)
                for i, s in enumerate(streams):
                    got = b""
                    while len(got) < 8:
                        data = await s.receive_some(8 - len(got))
                        if not data:
                            break
                        got += data
                    ok += got == b"%08d" % i
                await trio.sleep(1.0)
                after = {k: _rss_kib(p) for k, p in pids.items()}
        finally:
            for s in streams:
                s.socket.close()

    trio.run(main)
    per = {k: (after[k] - before[k]) * 1024 / count for k in pids}
    return {
        "count": count,
        "echo_ok": ok,
        "rss_kib_before": before,
        "rss_kib_after": after,
        "bytes_per_stream": per,
    }


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trivpn.bench reverse", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--seconds", type=float, default=5.0, help="iperf3 duration per test (default 5)"
    )
    p.add_argument("--rate", type=int, default=1000, help="HTTP requests per second (default 1000)")
    p.add_argument(
        "--latency-seconds", type=float, default=5.0, help="duration of each latency step"
    )
    p.add_argument(
        "--connections", type=int, default=16, help="keep-alive connections for the latency test"
    )
    p.add_argument(
        "--streams", type=int, default=10000, help="concurrent streams to hold (default 10000)"
    )
    p.add_argument(
        "--http-log", action="store_true", help="keep HTTP request logging on (costs CPU)"
    )
    p.add_argument("--no-ssh", action="store_true", help="skip the ssh -R comparison")
    p.add_argument(
        "--only",
        default="throughput,latency,streams",
        metavar="LIST",
        help="comma-separated parts to run: throughput, latency, streams (default: all)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--serve", choices=("http", "echo"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        return _serve(args.serve, args.port)
    parts = {x.strip() for x in args.only.split(",") if x.strip()}
    if not parts or parts - {"throughput", "latency", "streams"}:
        p.error(f"--only takes throughput, latency, streams, not {args.only!r}")
    if shutil.which("iperf3") is None:
        print("reverse bench: iperf3 is not installed (apt-get install iperf3)", file=sys.stderr)
        return 1
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.streams + 1000
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))

    work = Path(tempfile.mkdtemp(prefix="trivpn-bench-reverse-"))
    ch = Children(work)
    results: dict[str, Any] = {"host": os.uname().nodename, "cpus": os.cpu_count()}
    try:
        iperf_port, http_port, echo_port = _free_port(), _free_port(), _free_port()
        ch.start("iperf3", ["iperf3", "-s", "-B", HOST, "-p", str(iperf_port)])
        me = [sys.executable, "-m", "trivpn.bench", "reverse"]
        ch.start("http", [*me, "--serve", "http", "--port", str(http_port)])
        ch.start("echo", [*me, "--serve", "echo", "--port", str(echo_port)])
        for port in (iperf_port, http_port, echo_port):
            _wait_port(port)

        tport = _free_port()
        base = _free_range(3)
        relay = ch.start(
            "relay",
            [sys.executable, "-m", "trivpn", "relay", "--addr", f"{HOST}:{tport}", "--start-port", str(base),
             "--end-port", str(base + 2), "--token", TOKEN, *([] if args.http_log else ["--no-http-log"])],
        )  # fmt: skip
        _wait_port(tport)
        exposes = {}
        for i, (name, local) in enumerate(
            (("iperf", iperf_port), ("http", http_port), ("echo", echo_port))
        ):
            exposes[name] = ch.start(
                f"expose-{name}",
                [sys.executable, "-m", "trivpn", "expose", "--server", f"{HOST}:{tport}", "--local",
                 f"{HOST}:{local}", "--token", TOKEN, "--remote-port", str(base + i),
                 *([] if args.http_log else ["--no-http-log"])],
            )  # fmt: skip
            _wait_port(base + i)
        paths = {"direct": (iperf_port, http_port), "trivpn": (base, base + 1)}
        if not args.no_ssh and parts & {"throughput", "latency"}:
            ssh_port, key = _start_sshd(ch, work)
            s_iperf, s_http = _free_port(), _free_port()
            _ssh_forward(ch, ssh_port, key, [(s_iperf, iperf_port), (s_http, http_port)])
            paths["ssh -R"] = (s_iperf, s_http)

        if "throughput" in parts:
            thr: dict[str, dict[str, float]] = {}
            for name, (ip, _) in paths.items():
                thr[name] = {
                    "up_mbit": _iperf(ip, args.seconds, reverse=False),
                    "down_mbit": _iperf(ip, args.seconds, reverse=True),
                }
                print(
                    f"throughput {name:8s} {thr[name]['up_mbit']:9.0f} Mbit/s up  {thr[name]['down_mbit']:9.0f} Mbit/s down",
                    flush=True,
                )
            results["throughput"] = thr
            if "ssh -R" in thr:
                for d in ("up_mbit", "down_mbit"):
                    results.setdefault("ratio_vs_ssh", {})[d] = thr["trivpn"][d] / thr["ssh -R"][d]
                print(f"trivpn / ssh -R throughput: {results['ratio_vs_ssh']}", flush=True)
        if "latency" in parts:
            tunnel_pids = (relay.pid, exposes["http"].pid)
            lat: dict[str, dict[str, float]] = {}
            for name, (_, hp) in paths.items():
                cpu0 = sum(_cpu_seconds(pid) for pid in tunnel_pids)
                lat[name] = _latency(hp, args.rate, args.latency_seconds, args.connections)
                if name == "trivpn":  # relay + expose CPU per request (kernel time included)
                    cpu = sum(_cpu_seconds(pid) for pid in tunnel_pids) - cpu0
                    lat[name]["cpu_us_per_request"] = cpu / lat[name]["requests"] * 1e6
                print(f"latency    {name:8s} p50 {lat[name]['p50_ms']:.3f} ms  p99 {lat[name]['p99_ms']:.3f} ms  "
                      f"({lat[name]['rate']:.0f} req/s, {lat[name]['errors']} errors)", flush=True)  # fmt: skip
            for name in lat:
                lat[name]["added_p50_ms"] = lat[name]["p50_ms"] - lat["direct"]["p50_ms"]
            print(
                f"trivpn relay + expose CPU: {lat['trivpn']['cpu_us_per_request']:.0f} us/request"
            )
            results["latency"] = lat
            pp: dict[str, dict[str, dict[str, float]]] = {}
            for name, port in (("direct", echo_port), ("trivpn", base + 2)):
                pp[name] = {"back_to_back": _pingpong(port, 2000, 0.0),
                            "paced_5ms": _pingpong(port, 200, 0.005)}  # fmt: skip
                print(f"1-byte RTT {name:8s} back to back p50 {pp[name]['back_to_back']['p50_ms']:.3f} ms, "
                      f"paced 5 ms apart p50 {pp[name]['paced_5ms']['p50_ms']:.3f} ms", flush=True)  # fmt: skip
            results["pingpong"] = pp
        if "streams" in parts:
            st = _streams(
                base + 2, args.streams, {"relay": relay.pid, "expose": exposes["echo"].pid}
            )
            results["streams"] = st
            per = st["bytes_per_stream"]
            print(
                f"streams    {st['echo_ok']}/{st['count']} echoed while all open; RSS per stream: "
                f"relay {per['relay'] / 1024:.1f} KiB, expose {per['expose'] / 1024:.1f} KiB",
                flush=True,
            )
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"reverse bench: {exc} (logs in {work})", file=sys.stderr)
        return 1
    finally:
        ch.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0
