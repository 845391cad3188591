"""One-off (issue 16): the packets of a connect, trivpn's client against OpenVPN's, through
a relay that delays every datagram by 25 ms each way (a 50 ms round trip).

Why: `bench impaired --drop 0 --reorder 0 --duplicate 0 --relay-args '--latency 0.025'`
puts trivpn's start → first ping at twice OpenVPN's client's; this says whether the extra
time is round trips (the protocol) or the time before the first packet (the process). The
relay (`trivpn.testing.relay --capture`) writes each datagram it receives to a file; the
files' modification times give when, the first byte the opcode (tls-crypt leaves it in
the clear). Benchmark namespaces and Debian's OpenVPN server (UDP, tls-crypt,
AES-256-GCM), as `bench impaired` sets them up.

Usage (as root), from the project root:
    python3 docs/bench/scripts/issue16_handshake_timeline.py OUT.json
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())
from trivpn.bench.impaired import TARGET, _start_relay, _stop  # noqa: E402
from trivpn.testing import OpenVPNServer, ServerOptions, client_profile, generate_pki, netns_pair  # noqa: E402

OPS = {3: "SOFT_RESET", 4: "CONTROL", 5: "ACK", 6: "DATA_V1", 7: "RESET_CLIENT_V2",
       8: "RESET_SERVER_V2", 9: "DATA_V2", 10: "RESET_CLIENT_V3", 11: "CONTROL_WKC"}


def timeline(cap: Path, t0: float) -> list[dict[str, object]]:
    rows = []
    for f in cap.iterdir():
        data = f.read_bytes()
        rows.append({"ms": round((f.stat().st_mtime_ns / 1e9 - t0) * 1000, 1), "dir": f.name.split("-")[0],
                     "op": OPS.get(data[0] >> 3, str(data[0] >> 3)), "bytes": len(data)})
    return sorted(rows, key=lambda r: r["ms"])  # type: ignore[arg-type, return-value]


def main() -> None:
    out = Path(sys.argv[1])
    pki = generate_pki()
    opts = ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    result = {}
    with tempfile.TemporaryDirectory() as tmp, netns_pair(prefix="tvh") as pair:
        work = Path(tmp)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pyc")
        subprocess.run([sys.executable, "-c", "import trivpn.cli, trivpn.client"], env=env, check=False)
        server = OpenVPNServer(pair.server, pki, opts, work / "server", listen_v4=pair.server_v4)
        server.start()
        try:
            profile = work / "client.ovpn"
            profile.write_text(client_profile(pki, opts, "127.0.0.1"))
            for client in ("trivpn", "openvpn"):
                cap = work / f"cap-{client}"
                cap.mkdir()
                relay = _start_relay(pair.client, pair.server_v4, 1, ["--latency", "0.025", "--capture", str(cap)])
                t0 = time.time()
                if client == "trivpn":
                    proc = pair.client.popen([sys.executable, "-m", "trivpn", "ping", str(profile), TARGET, "-c", "1",
                                              "--no-reconnect"], stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, text=True, env=env)
                    proc.communicate(timeout=30)
                else:
                    proc = pair.client.popen(["openvpn", "--config", str(profile), "--log", str(work / "ov.log")],
                                             stdin=subprocess.DEVNULL)
                    for _ in range(200):  # bounded: ≤ 200 pings of ≤ 0.2 s
                        if pair.client.run(["ping", "-n", "-c", "1", "-W", "0.2", TARGET], check=False,
                                           timeout=10).returncode == 0:
                            break
                        time.sleep(0.02)
                    proc.terminate()
                    proc.wait(10)
                _stop(relay)
                rows = timeline(cap, t0)
                first = rows[0]["ms"] if rows else None
                result[client] = {"first_packet_ms": first, "packets": rows}
                print(f"== {client}: first packet {first} ms after the process started")
                for r in rows:
                    print(f"  {r['ms']:8.1f} ms  {r['dir']:4s} {r['op']:16s} {r['bytes']}")
        finally:
            server.stop()
    out.write_text(json.dumps(result, indent=1))


main()
