"""One-off (issue 16): trace what a real `trivpn connect` imports (-X importtime), in namespaces
against Debian's openvpn server. Usage (root): python3 issue16_connect_imports.py TREE OUT.txt"""
import os, subprocess, sys, time, tempfile, signal
from pathlib import Path
from trivpn.testing import OpenVPNServer, ServerOptions, client_profile, netns_pair, generate_pki
tree = sys.argv[1]
out = Path(sys.argv[2])
pki = generate_pki()
opts = ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM")
with tempfile.TemporaryDirectory() as tmp, netns_pair(prefix="tvi") as pair:
    server = OpenVPNServer(pair.server, pki, opts, Path(tmp) / "s", listen_v4=pair.server_v4)
    server.start()
    prof = Path(tmp) / "c.ovpn"; prof.write_text(client_profile(pki, opts, server.remote_host))
    env = dict(os.environ, PYTHONPATH=tree, PYTHONPYCACHEPREFIX="/tmp/dp2/pyc-imports")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for attempt in range(2):
        p = pair.client.popen([sys.executable, "-X", "importtime", "-m", "trivpn", "connect", str(prof)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        t0 = time.monotonic(); up = False
        lines = []
        while time.monotonic() - t0 < 20:
            line = p.stdout.readline()
            if not line: break
            lines.append(line)
            if "tunnel up" in line:
                up = True; break
        time.sleep(1.0)
        hwm = [l for l in Path(f"/proc/{p.pid}/status").read_text().splitlines() if l.startswith(("VmHWM", "VmRSS"))]
        mods = Path(f"/proc/{p.pid}/maps").read_text()
        p.send_signal(signal.SIGINT)
        rest = p.communicate(timeout=10)[0]
        lines += rest.splitlines(True)
    server.stop()
imp = [l for l in lines if l.startswith("import time:")]
out.write_text("".join(imp))
print("up:", up, hwm, len(imp), "imports")
