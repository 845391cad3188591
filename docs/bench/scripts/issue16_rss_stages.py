"""One-off (issue 16): where `trivpn connect`'s RSS grows after its imports.

Runs the Python loopback server (tls-crypt, AES-256-GCM) and a child that connects to it
through an AF_UNIX stand-in for the TUN (as `bench startup` does) and prints VmRSS (anon /
file) after: the imports, `SessionConfig.from_profile` (certificates, key, TLS context),
the engine, tunnel up, the first ping and 200 pings; then whether the system's OpenSSL
(`_ssl`, `_hashlib`) was loaded. No root.

Usage: python3 issue16_rss_stages.py TREE [udp|tcp]   (TREE: a trivpn checkout)
"""
import os
import pathlib
import sys
import tempfile

import trio

CHILD = r'''
import sys, socket, threading
def rss():
    d = {}
    for l in open("/proc/self/status"):
        if l.startswith(("VmRSS", "RssAnon", "RssFile")):
            d[l.split(":")[0]] = int(l.split()[1]) / 1024
    return f"RSS {d['VmRSS']:.1f} MB (anon {d['RssAnon']:.1f}, file {d['RssFile']:.1f})"
print("start", rss(), flush=True)
import trivpn.cli as cli
import trio
from trivpn.bench.startupchild import _echo_request
from trivpn.engine import Engine
from trivpn.session.config import SessionConfig
from trivpn.tun.linux import LinuxTun
import trivpn.datachannel.fastpath, trivpn.tlssession.tls
print("imports", rss(), flush=True)
args = cli.build_parser().parse_args(["connect", sys.argv[1]])
async def main():
    profile = cli._load(args.profile)
    config = SessionConfig.from_profile(profile, no_reconnect=True, data_threads=True,
        low_latency=False, family=args.family, key_derivation=args.key_derivation,
        username=None, password=None)
    print("config", rss(), flush=True)
    ours, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    far.setblocking(False)
    engine = Engine(config, LinuxTun(ours.detach(), "bench0"), handle_signals=True)
    print("engine", rss(), flush=True)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            info = await nursery.start(engine.run)
            print("up", rss(), flush=True)
            for i in range(200):
                far.send(_echo_request(info.settings.ifconfig_local or "10.8.0.2", "10.8.0.1"))
                while True:
                    await trio.lowlevel.wait_readable(far)
                    reply = far.recv(65536)
                    if len(reply) > 20 and reply[20] == 0:
                        break
                if i == 0:
                    print("ping 1", rss(), flush=True)
            print("ping 200", rss(), "system OpenSSL loaded:",
                  [m for m in ("_ssl", "_hashlib") if m in sys.modules], flush=True)
            engine.request_stop("done")
trio.run(main)
'''


async def main() -> None:
    tree = pathlib.Path(sys.argv[1]).resolve()
    sys.path.insert(0, str(tree))
    from trivpn.testing.loopback_server import LoopbackServerConfig, open_loopback_server
    from trivpn.testing.pki import generate_pki

    work = pathlib.Path(tempfile.mkdtemp())
    config = LoopbackServerConfig(proto=sys.argv[2] if len(sys.argv) > 2 else "udp", wrap="tls-crypt")
    async with open_loopback_server(config, pki=generate_pki()) as server:
        profile = work / "p.ovpn"
        profile.write_text(server.client_profile("data-ciphers AES-256-GCM\n"))
        (work / "child.py").write_text(CHILD)
        with trio.fail_after(120):
            proc = await trio.run_process([sys.executable, "-P", str(work / "child.py"), str(profile)],
                                          env=dict(os.environ, PYTHONPATH=str(tree)),
                                          capture_stdout=True, capture_stderr=True, check=False)
    print(proc.stdout.decode(), end="")
    if proc.returncode:
        print(proc.stderr.decode()[-2000:], file=sys.stderr)


trio.run(main)
