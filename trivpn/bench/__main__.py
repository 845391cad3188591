"""`python -m trivpn.bench NAME [options]`: dispatch to one benchmark's `main(argv)`."""

from __future__ import annotations

import importlib
import sys

#: name → (module, what it measures). Modules are imported only when chosen.
BENCHMARKS = {
    "vpn": ("trivpn.bench.vpn", "trivpn's client vs OpenVPN's, same server: throughput, latency, start-up"),
    "impaired": ("trivpn.bench.impaired", "behaviour over an impaired link (loss, delay, reordering)"),
    "reverse": ("trivpn.bench.reverse", "the reverse tunnel"),
    "profile": ("trivpn.bench.profile", "per-packet cost of the data path, stage by stage (loopback, no root)"),
    "ab": ("trivpn.bench.ab", "the vpn benchmark with trivpn from a baseline tree too (--base DIR): old vs new, same run"),
    "startup": ("trivpn.bench.startup", "what `trivpn connect` imports before its first ping: ms and RSS per package (no root)"),
    "rtt": ("trivpn.bench.pairrtt", "idle ping RTT of two clients connected at once, their pings interleaved (drift-free ratio)"),
    "server": ("trivpn.bench.server", "trivpn serve vs openvpn --server: throughput, set-up rate, RSS per client"),
}


def _usage() -> str:
    lines = ["usage: python -m trivpn.bench NAME [options]   (NAME --help for its options)", ""]
    lines += [f"  {name:9s} {what}" for name, (_mod, what) in BENCHMARKS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in BENCHMARKS:
        print(f"trivpn.bench: unknown benchmark {name!r}\n{_usage()}", file=sys.stderr)
        return 2
    module_name = BENCHMARKS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            print(f"trivpn.bench: the {name!r} benchmark ({module_name}) is not part of this build",
                  file=sys.stderr)
            return 1
        raise
    result: int = module.main(rest)
    return result


if __name__ == "__main__":
    sys.exit(main())
