"""Long-lived sessions against the real openvpn 2.6 server: renegotiation (issue 4)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trivpn.testing.ovpn_server import ServerOptions, client_profile

pytestmark = pytest.mark.root


def _run_client(netns, profile: Path, log: Path) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    return netns.client.popen(
        [sys.executable, "-m", "trivpn", "connect", str(profile)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def _wait_for(log: Path, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not seen within {timeout}s:\n{log.read_text()}")


@pytest.mark.parametrize(
    ("who", "server_extra", "client_extra"),
    [
        ("server", ["reneg-sec 2"], ["reneg-sec 0"]),
        ("client", ["reneg-sec 0"], ["reneg-sec 2"]),
    ],
)
def test_continuous_ping_across_many_renegotiations(  # type: ignore[no-untyped-def]
    who, server_extra, client_extra, pki, netns, openvpn_server, tmp_path: Path
) -> None:
    """A ping every 0.1 s for 20 s while the keys change about every 2 s (key ids wrap 7→1)."""
    opts = ServerOptions(proto="udp", wrap="tls-crypt", extra=server_extra)
    server = openvpn_server(opts)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, server.remote_host, extra=client_extra))
    log = tmp_path / "client.log"
    proc = _run_client(netns, profile, log)
    try:
        _wait_for(log, "tunnel up", 30)
        r = netns.client.run(
            ["ping", "-c", "200", "-i", "0.1", "-W", "1", server.tunnel_v4], check=False, timeout=60
        )
        m = re.search(r"(\d+) packets transmitted, (\d+) received", r.stdout)
        assert m, r.stdout
        sent, received = int(m.group(1)), int(m.group(2))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
        text = log.read_text()
        renegs = re.findall(r"new data keys in use: key id (\d)", text)
        started = "server started a renegotiation" if who == "server" else "renegotiating data keys"
        assert started in text, text
        assert len(renegs) >= 7, text  # wrapped past key id 7 at least once
        assert "1" in renegs[7:] or renegs.count("1") >= 2, renegs
        lost = sent - received
        print(f"{who}-initiated: {len(renegs)} renegotiations, {lost}/{sent} pings lost")
        assert lost <= 2, f"{lost} of {sent} pings lost across {len(renegs)} renegotiations\n{r.stdout[-500:]}"
        assert "Traceback" not in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
