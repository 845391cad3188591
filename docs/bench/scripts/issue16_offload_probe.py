"""One-off probe for the TUN write offload and read coalescing (issue 16), kept so its
figures can be re-taken: per direction, the client's CPU per GB and how many packets each
merged TUN write carried.

`trivpn.bench vpn` reports CPU per GB over both directions together; this runs Debian's
openvpn server (one cipher, tls-crypt) and `trivpn connect -vv` in the benchmark's
namespaces, then iperf3 through the tunnel in the order given, reading the client's
utime/stime from /proc around each run. At the end the client logs its TUN counters
("N written (M of them in K merged writes)"). Environment variables pass through, so:

    sudo python3 docs/bench/scripts/issue16_offload_probe.py udp            # -R, up, -R, up
    sudo TRIVPN_RX_COALESCE=0 python3 docs/bench/scripts/issue16_offload_probe.py tcp R
    sudo TRIVPN_TUN_GRO=0 python3 docs/bench/scripts/issue16_offload_probe.py udp 3   # 3 x up

Traffic stays inside the namespaces created here; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from trivpn.testing import (  # noqa: E402
    OpenVPNServer,
    ServerOptions,
    client_profile,
    generate_pki,
    netns_pair,
)


def main() -> None:
    proto = sys.argv[1] if len(sys.argv) > 1 else "udp"
    how = sys.argv[2] if len(sys.argv) > 2 else ""
    runs = [["-R"]] * 3 if how == "R" else [[]] * int(how) if how else [["-R"], [], ["-R"], []]
    pki = generate_pki()
    opts = ServerOptions(proto=proto, wrap="tls-crypt", data_ciphers="AES-256-GCM")
    with tempfile.TemporaryDirectory() as tmp, netns_pair(prefix="tvg") as pair:
        work = Path(tmp)
        (work / "s").mkdir()
        server = OpenVPNServer(pair.server, pki, opts, work / "s", listen_v4=pair.server_v4)
        server.start()
        iperf = pair.server.popen(["iperf3", "-s"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        profile = work / "c.ovpn"
        profile.write_text(client_profile(pki, opts, server.remote_host))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        client = pair.client.popen([sys.executable, "-m", "trivpn", "connect", str(profile), "-vv"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=env)
        time.sleep(2.5)

        def cpu(pid: int | None = None) -> tuple[float, int, int]:
            stat = Path(f"/proc/{pid or client.pid}/stat").read_text()
            f = stat.rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK"), int(f[11]), int(f[12])

        server_pid = server._proc.pid  # the openvpn server process (its CPU: the bottleneck?)

        try:
            for args in runs:
                a, sa, t0 = cpu(), cpu(server_pid), time.monotonic()
                r = pair.client.run(["iperf3", "-c", "10.202.0.1", "-t", "3", "-J", *args],
                                    capture_output=True, text=True, timeout=30)
                b, sb, t1 = cpu(), cpu(server_pid), time.monotonic()
                end = json.loads(r.stdout).get("end", {})
                if "sum_received" not in end:
                    print(args or ["up"], "iperf3 failed")
                    continue
                nbytes = end["sum_received"]["bytes"]
                print(args or ["up"], f"{nbytes * 8 / 3e6:.0f} Mbit/s",
                      f"cpu {(b[0] - a[0]) / (nbytes / 1e9):.2f} s/GB "
                      f"(user {b[1] - a[1]} sys {b[2] - a[2]} ticks); openvpn server "
                      f"{100 * (sb[0] - sa[0]) / (t1 - t0):.0f} % of a core")
        finally:
            status = Path(f"/proc/{client.pid}/status").read_text()
            print(next(line for line in status.splitlines() if line.startswith("VmHWM")))
            client.send_signal(signal.SIGINT)
            out, _ = client.communicate(timeout=20)
            print("\n".join(line for line in out.splitlines() if "closed:" in line))
            iperf.kill()
            server.stop()


if __name__ == "__main__":
    main()
