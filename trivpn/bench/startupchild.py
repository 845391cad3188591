"""The child processes of `python -m trivpn.bench startup` (run as a script, never imported
by the engine).

Why a script: the bench measures what a fresh interpreter pays for `trivpn connect`'s
imports, so the child must not import anything before it starts counting — not even the
`trivpn.bench` package. The parent runs this file by path with `python -P` (the script's
directory stays off `sys.path`: its neighbours `profile.py` and `server.py` would shadow the
standard library's) and `PYTHONPATH` set to the tree under test, so the same file measures
an older tree too (`--base`).

Three modes, each writing its answer to the file named last on its command line:

* `trace PROFILE OUT` (under `-X importtime`): what `trivpn connect PROFILE` runs, up to the
  first ping reply, with a profile hook recording which functions ran. The steps are those
  of `trivpn.cli.main` and `cmd_connect`, except that the TUN is one end of an AF_UNIX
  datagram pair (no root: the bench writes the echo request into the other end) and the
  addresses are not applied to it. OUT gets one line per module: `name<TAB>state`, state
  `used` (one of its functions ran), `unused` (only its module/class bodies ran), `parent`
  (a package whose submodule was used) or `ext` (a C extension: calls into it are not
  all visible, so never called unused).
* `ping PROFILE OUT`: the same run without the hook (and, from the parent, without
  `-X importtime`); OUT gets `CLOCK_MONOTONIC at the first reply<TAB>VmHWM kB`.
* `measure PLAN OUT`: import PLAN's modules (`group<TAB>module` lines, in order) group by
  group; OUT gets `group<TAB>wall ms<TAB>CPU ms<TAB>VmRSS kB` after each group, the first
  line (`start`) before any import.
"""

import sys

START_MODULES = frozenset(sys.modules)

import time  # noqa: E402  # a builtin module: nothing loaded after the snapshot counts
from typing import TYPE_CHECKING  # noqa: E402  # site has loaded typing already (if not: the trace counts it)

if TYPE_CHECKING:
    from typing import Any
else:
    Any = object


def _rss_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def measure(plan_path: str, out_path: str) -> None:
    """Import the plan's groups in order; time and RSS after each (see the docstring)."""
    rows = [("start", 0.0, 0.0, _rss_kb())]
    groups: list[tuple[str, list[str]]] = []
    with open(plan_path) as f:
        for line in f:
            group, _, name = line.rstrip("\n").partition("\t")
            if not groups or groups[-1][0] != group:
                groups.append((group, []))
            groups[-1][1].append(name)
    failed: list[str] = []
    if any("trivpn.lazystdlib" in names for _g, names in groups):
        # as `trivpn connect` does before it imports trio (counted in the first group)
        __import__("trivpn.lazystdlib").lazystdlib.defer()
    for group, names in groups:
        t0, c0 = time.perf_counter(), time.process_time()
        for name in names:
            try:
                __import__(name)
            except Exception:  # a module that only imports as a side effect of another
                failed.append(name)
        rows.append((group, (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000, _rss_kb()))
    with open(out_path, "w") as f:
        f.writelines(f"{g}\t{ms:.3f}\t{cpu:.3f}\t{kb}\n" for g, ms, cpu, kb in rows)
        f.writelines(f"failed\t{name}\t0\t0\n" for name in failed)


#: filenames whose functions ran (Python code), modules whose builtins were called
_USED_FILES: set[str] = set()
_USED_MODULES: set[str] = set()
_CO_OPTIMIZED = 1  # functions; module and class bodies lack the flag


def _hook(frame: Any, event: str, arg: object) -> None:
    if event == "call":
        code = frame.f_code
        if code.co_flags & _CO_OPTIMIZED:
            _USED_FILES.add(code.co_filename)
    elif event == "c_call":
        owner = getattr(arg, "__self__", None)
        if type(owner) is type(sys):
            _USED_MODULES.add(owner.__name__)


def _echo_request(src: str, dst: str) -> bytes:
    """An IPv4 ICMP echo request, built here so that the harness imports nothing of trivpn."""
    import socket
    import struct

    def csum(data: bytes) -> int:
        total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        return ~total & 0xFFFF

    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x7B7B, 1) + b"trivpn-bench-startup"
    icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", csum(header)) + header[12:]
    return header + icmp


def trace(profile_path: str, out_path: str) -> None:
    """`trivpn connect PROFILE` to the first ping reply, recording what ran (see above)."""
    _connect_and_ping(profile_path, out_path, traced=True)


def ping(profile_path: str, out_path: str) -> None:
    """The same without the hook: when the first reply came (CLOCK_MONOTONIC, the parent
    knows when it started us) and the peak RSS then."""
    _connect_and_ping(profile_path, out_path, traced=False)


def _connect_and_ping(profile_path: str, out_path: str, *, traced: bool) -> None:
    if traced:
        sys.setprofile(_hook)
    import trivpn.cli as cli  # what `python -m trivpn` imports first

    argv = ["connect", profile_path]
    only = getattr(cli, "core_command", lambda _argv: None)(argv)  # as cli.main; older trees lack it
    args = (cli.build_parser(only) if only else cli.build_parser()).parse_args(argv)
    from trivpn.cli_common import setup_logging

    setup_logging(0, True, None)
    import trio

    from trivpn.workers.manager import primary_error  # noqa: F401  # as cli.main does

    async def connect() -> None:
        import socket
        import threading

        from trivpn.engine import Engine
        from trivpn.session.config import SessionConfig
        from trivpn.tun.linux import LinuxTun

        if traced:
            threading.setprofile(_hook)  # the data-plane threads
        profile = cli._load(args.profile)
        profile.no_dns = profile.no_dns or args.no_dns
        cli._ask_key_passphrase(profile)
        if cli._observe_options(profile, args) is not None:
            raise SystemExit("the startup bench's profile must not ask for management/status/metrics")
        username, password = cli._credentials(profile, args)
        config = SessionConfig.from_profile(
            profile, no_reconnect=True, data_threads=not args.no_data_threads,
            low_latency=args.low_latency, family=args.family, key_derivation=args.key_derivation,
            username=username, password=password,
        )
        ours, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        far.setblocking(False)
        engine = Engine(config, LinuxTun(ours.detach(), "bench0"), handle_signals=True)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                info = await nursery.start(engine.run)
                far.send(_echo_request(info.settings.ifconfig_local or "10.8.0.2", "10.8.0.1"))
                while True:
                    await trio.lowlevel.wait_readable(far)
                    reply = far.recv(65536)
                    if len(reply) > 20 and reply[20] == 0:  # ICMP echo reply
                        break
                if traced:
                    sys.setprofile(None)
                    threading.setprofile(None)
                    _write_trace(out_path)
                else:
                    _write_ping(out_path, time.monotonic())
                engine.request_stop("startup bench done")
        far.close()

    trio.run(connect)


#: the standard library's bindings of the system's OpenSSL (trivpn.lazystdlib keeps them out)
SYSTEM_OPENSSL = ("_ssl", "_hashlib")


def _write_ping(out_path: str, replied: float) -> None:
    loaded = ",".join(m for m in SYSTEM_OPENSSL if m in sys.modules) or "-"
    with open(out_path, "w") as f:
        f.write(f"{replied:.6f}\t{_rss_kb('VmHWM')}\t{loaded}\n")


def _stand_in(mod: object) -> bool:
    """A `trivpn.lazystdlib` stand-in nothing has used: not an imported module."""
    return type(mod).__name__ == "_StandIn" and type(mod).__module__ == "trivpn.lazystdlib"


def _write_trace(out_path: str) -> None:
    me = __file__
    modules = {name: mod for name, mod in list(sys.modules.items())
               if name not in START_MODULES and not _stand_in(mod)}
    state: dict[str, str] = {}
    for name, mod in modules.items():
        path = getattr(mod, "__file__", None) or ""
        if path.endswith((".so", ".pyd")) or (not path and name not in _USED_MODULES):
            state[name] = "used" if name in _USED_MODULES else "ext"
        else:
            state[name] = "used" if path in _USED_FILES or name in _USED_MODULES else "unused"
    for name in list(state):
        if state[name] == "used":
            parent = name.rpartition(".")[0]
            while parent:
                if state.get(parent) == "unused":
                    state[parent] = "parent"
                parent = parent.rpartition(".")[0]
    with open(out_path, "w") as f:
        f.writelines(f"{name}\t{st}\n" for name, st in state.items() if getattr(modules[name], "__file__", "") != me)


MODES = {"trace": trace, "ping": ping, "measure": measure}

if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in MODES:
        raise SystemExit("usage: startupchild.py trace|ping PROFILE OUT | measure PLAN OUT")
    MODES[sys.argv[1]](sys.argv[2], sys.argv[3])
