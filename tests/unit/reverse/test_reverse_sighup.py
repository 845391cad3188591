"""A relay started in a terminal or an ssh session gets SIGHUP when that closes: it stops
as on SIGTERM (exit 0, its summary printed), instead of dying of the default action with
its public connections closed by the kernel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from helpers.reverse import HOST, free_port

from trivpn.testing.process import read_until, rest_of_output, stop_process


def test_sighup_stops_the_relay_gracefully() -> None:
    tport, start = free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TRIVPN_TOKEN": "0123456789abcdef-sighup"}
    relay = subprocess.Popen(
        [sys.executable, "-m", "trivpn", "relay", "--addr", f"{HOST}:{tport}",
         "--start-port", str(start), "--end-port", str(start + 1)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        read_until(relay, "relay listening", 15)
        relay.send_signal(signal.SIGHUP)
        assert relay.wait(timeout=15) == 0  # was -1 (killed by SIGHUP)
        assert "Traceback" not in rest_of_output(relay)
    finally:
        stop_process(relay)
