"""Memory of `trivpn relay` / `trivpn expose` under stalled readers, read from /proc.

Runs both as subprocesses on loopback (so /proc/<pid>/status shows each one's own RSS),
a local service in a thread of this process, and N public clients as plain sockets:

* "download": each client sends a request and never reads; the service answers every
  connection with `size` bytes as fast as it is taken (the relay holds what the
  clients do not read);
* "upload": the service accepts and never reads; each client writes `size` bytes as far
  as the path takes them (expose holds what the service does not read), then leaves.

Also runnable as a script to compare two trees (the "before" figure):
    python3 tests/helpers/reverse_memory.py /work/main download
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

TOKEN = "0123456789abcdef-memory-test"
HOST = "127.0.0.1"
CHUNK = b"x" * 65536


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settle(pid: int, limit: float = 20.0) -> int:
    """RSS (KiB) once it stopped moving (< 1 MiB over 1.5 s), or after `limit` seconds."""
    last = rss_kib(pid)
    stable_since = time.monotonic()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = rss_kib(pid)
        if abs(now - last) > 1024:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= 1.5:
            break
    return rss_kib(pid)


class Service(threading.Thread):
    """A local service: `download` writes `size` bytes to each connection; `upload`
    accepts and never reads."""

    def __init__(self, mode: str, size: int) -> None:
        super().__init__(daemon=True)
        self.mode = mode
        self.size = size
        self.listener = socket.socket()
        if mode == "upload":  # a reader that takes nothing: keep the kernel out of it
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.listener.bind((HOST, 0))
        self.listener.listen(1024)
        self.listener.setblocking(False)
        self.port = int(self.listener.getsockname()[1])
        self.stop = threading.Event()
        self.conns: dict[socket.socket, int] = {}
        self.lock = threading.Lock()

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        while not self.stop.is_set():
            for key, _ in sel.select(0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.listener:
                    try:
                        conn, _ = self.listener.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    with self.lock:
                        self.conns[conn] = 0
                    if self.mode == "download":
                        sel.register(conn, selectors.EVENT_WRITE)
                    continue
                sent = self.conns[sock]
                try:
                    sent += sock.send(CHUNK[: self.size - sent])
                except OSError:
                    sent = self.size
                self.conns[sock] = sent
                if sent >= self.size:
                    sel.unregister(sock)
        sel.close()
        with self.lock:
            for conn in self.conns:
                conn.close()
        self.listener.close()


@dataclass
class Figures:
    relay_before: int = 0
    relay_after: int = 0
    expose_before: int = 0
    expose_after: int = 0
    expose_fds_before: int = 0
    expose_fds_loaded: int = 0
    expose_fds_after_leave: int = 0
    notes: list[str] = field(default_factory=list)

    def mib(self) -> str:
        return (
            f"relay {self.relay_before / 1024:.0f} -> {self.relay_after / 1024:.0f} MiB, "
            f"expose {self.expose_before / 1024:.0f} -> {self.expose_after / 1024:.0f} MiB, "
            f"expose fds {self.expose_fds_before} -> {self.expose_fds_loaded} -> "
            f"{self.expose_fds_after_leave} after the clients left"
        )


def _start(tree: str, args: list[str]) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=tree, TRIVPN_TOKEN=TOKEN)
    return subprocess.Popen(
        [sys.executable, "-m", "trivpn", *args],
        env=env,
        stdout=subprocess.DEVNULL,  # a pipe nobody reads would stall it once full
        stderr=subprocess.DEVNULL,
    )


def _wait_public(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"public port {port} never opened")


def run(
    tree: str,
    mode: str,
    clients: int = 300,
    size: int = 4 * 1024 * 1024,
    extra: list[str] | None = None,
    leave_wait: float = 0.0,
) -> Figures:
    """Figures for one scenario against the trivpn in `tree` (a PYTHONPATH)."""
    extra = extra or []
    fig = Figures()
    service = Service(mode, size)
    service.start()
    tport, pport = free_port(), free_port()
    relay = _start(
        tree,
        [
            "relay",
            "--addr",
            f"{HOST}:{tport}",
            "--start-port",
            str(pport),
            "--end-port",
            str(pport),
            "--no-http-log",
            *extra,
        ],
    )
    expose: subprocess.Popen[bytes] | None = None
    socks: list[socket.socket] = []
    try:
        time.sleep(0.5)
        expose = _start(
            tree,
            [
                "expose",
                "--server",
                f"{HOST}:{tport}",
                "--local",
                f"{HOST}:{service.port}",
                "--no-http-log",
                *extra,
            ],
        )
        _wait_public(pport)
        time.sleep(0.5)
        fig.relay_before, fig.expose_before = settle(relay.pid, 3), settle(expose.pid, 3)
        fig.expose_fds_before = fd_count(expose.pid)
        for _ in range(clients):
            s = socket.socket()
            if mode == "download":  # a client that reads nothing: a tiny receive buffer
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect((HOST, pport))
            s.setblocking(False)
            socks.append(s)
            if mode == "download":
                s.send(b"GET /big HTTP/1.0\r\n\r\n")
        if mode == "upload":
            sent = [0] * clients
            for _ in range(40):  # as far as the path takes it, bounded in time
                progress = False
                for i, s in enumerate(socks):
                    while sent[i] < size:
                        try:
                            n = s.send(CHUNK[: size - sent[i]])
                        except (BlockingIOError, OSError):
                            break
                        sent[i] += n
                        progress = True
                if not progress:
                    time.sleep(0.25)
            fig.notes.append(f"uploaded {sum(sent) >> 20} MiB in all")
        fig.relay_after = settle(relay.pid)
        fig.expose_after = settle(expose.pid)
        fig.expose_fds_loaded = fd_count(expose.pid)
        for s in socks:
            s.close()
        socks.clear()
        if leave_wait:
            deadline = time.monotonic() + leave_wait
            while time.monotonic() < deadline and fd_count(expose.pid) > fig.expose_fds_before:
                time.sleep(0.25)
        fig.expose_fds_after_leave = fd_count(expose.pid)
        return fig
    finally:
        for s in socks:
            s.close()
        for proc in (expose, relay):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        service.stop.set()
        service.join(5)


if __name__ == "__main__":
    tree = sys.argv[1]
    for mode in sys.argv[2:] or ["download", "upload"]:
        f = run(tree, mode, leave_wait=10.0)
        print(mode, f.mib(), *f.notes, flush=True)
