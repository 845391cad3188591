"""One-off (issue 16, 2026-12-02): levers on `trivpn connect`'s RSS that did not pay.

Runs `issue16_rss_stages.py`'s child (loopback server, tls-crypt, AES-256-GCM, an AF_UNIX
stand-in for the TUN; no root) and prints VmRSS (anon / file) after each stage, then the
resident MB of each mapping after 200 pings (where the 38 MB are). With `--trim` the child
calls `gc.collect()` and glibc's `malloc_trim(0)` right after its imports. The other levers
are environment variables of the run (each run twice, the first only fills the cache):

    PYTHONPYCACHEPREFIX=/tmp/o2 PYTHONOPTIMIZE=2 python3 issue16_rss_levers.py TREE   # -OO
    PYTHONPYCACHEPREFIX=/tmp/nd PYTHONNODEBUGRANGES=1 python3 issue16_rss_levers.py TREE

`--make-noctypes-tree TREE OUT` copies TREE to OUT with a `cli.py` that puts a `ctypes`
stand-in in `sys.modules` before trio is imported (trio then names no threads), for
`python -m trivpn.bench startup --base OUT`.

Usage: python3 issue16_rss_levers.py TREE [udp|tcp] [--trim]
"""
import os
import pathlib
import shutil
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
if "--trim" in sys.argv:
    import ctypes, gc; gc.collect(); ctypes.CDLL(None).malloc_trim(0); print("trimmed", rss(), flush=True)
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
            import collections; agg=collections.Counter(); cur=None
            for l in open("/proc/self/smaps"):
                p=l.split()
                if not p[0].endswith(":") or "-" in p[0]:
                    cur=p[5] if len(p)>5 else "[anon]"
                elif p[0]=="Rss:": agg[cur]+=int(p[1])
            [print(f"{v/1024:6.2f} {k}") for k,v in agg.most_common(25)]
            engine.request_stop("done")
trio.run(main)
'''


NOCTYPES = """import types as _t
_c = _t.ModuleType("ctypes"); _u = _t.ModuleType("ctypes.util")
_u.find_library = lambda name: None
def _cdll(*a, **k): raise OSError("ctypes stand-in")
_c.CDLL = _cdll; _c.util = _u
import sys as _s; _s.modules["ctypes"] = _c; _s.modules["ctypes.util"] = _u
"""


def make_noctypes_tree(tree: pathlib.Path, out: pathlib.Path) -> None:
    shutil.copytree(tree / "trivpn", out / "trivpn", ignore=shutil.ignore_patterns("__pycache__"))
    cli = out / "trivpn" / "cli.py"
    text = cli.read_text()
    marker = "lazystdlib.defer()"
    assert marker in text, "cli.py no longer calls lazystdlib.defer()"
    cli.write_text(text.replace(marker, NOCTYPES + marker, 1))


async def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    tree = pathlib.Path(args[0]).resolve()
    sys.path.insert(0, str(tree))
    from trivpn.testing.loopback_server import LoopbackServerConfig, open_loopback_server
    from trivpn.testing.pki import generate_pki

    work = pathlib.Path(tempfile.mkdtemp())
    config = LoopbackServerConfig(proto=args[1] if len(args) > 1 else "udp", wrap="tls-crypt")
    async with open_loopback_server(config, pki=generate_pki()) as server:
        profile = work / "p.ovpn"
        profile.write_text(server.client_profile("data-ciphers AES-256-GCM\n"))
        (work / "child.py").write_text(CHILD)
        argv = [sys.executable, "-P", str(work / "child.py"), str(profile)]
        if "--trim" in sys.argv:
            argv.append("--trim")
        with trio.fail_after(120):
            proc = await trio.run_process(argv, env=dict(os.environ, PYTHONPATH=str(tree)),
                                          capture_stdout=True, capture_stderr=True, check=False)
    print(proc.stdout.decode(), end="")
    if proc.returncode:
        print(proc.stderr.decode()[-2000:], file=sys.stderr)


if "--make-noctypes-tree" in sys.argv:
    _i = sys.argv.index("--make-noctypes-tree")
    make_noctypes_tree(pathlib.Path(sys.argv[_i + 1]), pathlib.Path(sys.argv[_i + 2]))
else:
    trio.run(main)
