"""`python -m trivpn.bench startup`: what `trivpn connect` pays at start-up, package by package.

Why: the issue-16 targets (start → first ping ≤ 0.2 s, RSS ≤ 35 MB) are decided by the
imports before the first packet; this sub-command turns the one-off traces of that round
into numbers anyone can reproduce, without root.

1. **Trace.** A child runs `trivpn connect` on a minimal profile (UDP or TCP, tls-crypt,
   AES-256-GCM: no management, status, metrics, scripts, proxy, kill switch or DNS) against
   `trivpn.testing`'s loopback server, to the first ping reply, under `-X importtime` and a
   profile hook (`startupchild.py trace`). That gives the module set, in the order the
   imports completed, and which modules had none of their functions run: imported for
   nothing on this path (candidates for a lazy import; a module kept for its exception
   classes or constants shows here too, so the list is to be read, not obeyed).
2. **Measure.** `--rounds` fresh children (`startupchild.py measure`) import that set group
   by group — `ssl` and `ctypes` (with their shared libraries), the rest of the standard
   library, asyncio, each third-party package in the order met, trivpn last; each row also
   holds what its modules import that no earlier row loaded — and read the wall time, the
   process's CPU time (the steadier figure on a shared machine) and `VmRSS` from
   /proc/self/status after each group. With `--base TREE` the same is done for an older
   trivpn tree, alternating round by round, so a before → after comparison shares the
   machine's moment. Medians are reported.
3. **Start → first ping.** In each round, after its measuring child, a `startupchild.py
   ping` child per tree runs the same connect as the trace without any hook: the time from
   spawning it to the first echo reply, and its peak RSS (VmHWM) at that moment. The server
   is the Python loopback server in this process (the `vpn` benchmark, against OpenVPN's
   server, stays the reference for this figure).

Output: a table, and JSON with `--json PATH`. `--quick`: two rounds (the unit test's smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import trio

from trivpn.records import dataclass

if TYPE_CHECKING:
    from trivpn.testing.pki import PKI

CHILD = Path(__file__).with_name("startupchild.py")
#: bound on one child (a trace includes a TLS handshake under a profile hook)
CHILD_TIMEOUT = 120.0
STDLIB = "stdlib"
#: standard-library modules with a row of their own (large shared libraries behind them);
#: they are imported first, then the rest of the stdlib, then asyncio
OWN_ROW = {"_ssl": "ssl", "ssl": "ssl", "_ctypes": "ctypes", "ctypes": "ctypes",
           "_asyncio": "asyncio", "asyncio": "asyncio"}
FIRST = ("ssl", "ctypes", STDLIB, "asyncio")
#: the figures every tree's report carries (tests/unit/bench/test_startup.py)
TREE_FIGURES = ("modules", "baseline_rss_mb", "import_ms", "import_ms_min", "import_cpu_ms",
                "rss_after_imports_mb", "start_to_ping_s", "peak_rss_at_ping_mb", "packages",
                "unused_modules", "rounds", "system_openssl_modules")
PACKAGE_FIGURES = ("package", "modules", "unused", "import_ms", "import_cpu_ms", "rss_mb")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m trivpn.bench startup", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=9, help="measuring children per tree (9)")
    p.add_argument("--proto", choices=("udp", "tcp"), default="udp", help="the profile's transport (udp)")
    p.add_argument("--base", metavar="TREE", help="also measure the trivpn in TREE (a checkout), alternating")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON here")
    p.add_argument("--quick", action="store_true", help="two rounds (smoke run)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = 2
    if not 1 <= args.rounds <= 100:
        p.error("--rounds must be 1..100")
    if args.base and not (Path(args.base) / "trivpn" / "__init__.py").is_file():
        p.error(f"--base {args.base}: no trivpn package there")
    return args


def _child_env(tree: Path, pyc: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONPYCACHEPREFIX=str(pyc / tree.as_posix().strip("/").replace("/", "_")))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def top_level(name: str) -> str:
    """The package a module is counted under (asyncio apart from the rest of the stdlib)."""
    top = name.partition(".")[0]
    if top in OWN_ROW:  # _asyncio's initialisation imports asyncio: counted with it
        return OWN_ROW[top]
    return STDLIB if top in sys.stdlib_module_names else top


def parse_importtime(stderr: str) -> list[str]:
    """Module names from `-X importtime` lines, in the order their imports completed."""
    names = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.append(name)
    return names


def plan(order: list[str], states: dict[str, str]) -> list[tuple[str, str]]:
    """(group, module) in import order: `FIRST`, third parties as met, trivpn last.

    `-X importtime` misses what `importlib.import_module` loads (trivpn.cli's sub-command
    plugins): those follow, in the order the trace saw them start."""
    mods = [m for m in dict.fromkeys([*order, *states]) if m in states and not m.startswith("trivpn.bench")]
    met = list(dict.fromkeys(top_level(m) for m in mods))
    rank = {g: i - len(FIRST) for i, g in enumerate(FIRST)} | {"trivpn": len(met)}
    groups = sorted(met, key=lambda g: rank.get(g, met.index(g)))
    return [(g, m) for g in groups for m in mods if top_level(m) == g]


async def _connect_child(mode: str, tree: Path, ctx: _Context) -> tuple[float, str, Path]:
    """Run a `trace` or `ping` child against a fresh loopback server: (when it was started
    on CLOCK_MONOTONIC, its stderr, its answer file)."""
    from trivpn.testing.loopback_server import LoopbackServerConfig, open_loopback_server

    out = ctx.work / f"{mode}-{tree.name}.txt"
    out.unlink(missing_ok=True)
    config = LoopbackServerConfig(proto=ctx.proto, wrap="tls-crypt")
    async with open_loopback_server(config, pki=ctx.pki) as server:
        profile = ctx.work / "startup.ovpn"
        profile.write_text(server.client_profile("data-ciphers AES-256-GCM\n"))
        hooks = ["-X", "importtime"] if mode == "trace" else []
        cmd = [sys.executable, "-P", *hooks, str(CHILD), mode, str(profile), str(out)]
        started = time.monotonic()
        with trio.fail_after(CHILD_TIMEOUT):
            proc = await trio.run_process(cmd, env=_child_env(tree, ctx.pyc), capture_stdout=True,
                                          capture_stderr=True, check=False)
    err = proc.stderr.decode(errors="replace")
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join(x for x in err.splitlines() if not x.startswith("import time:"))[-2000:]
        raise RuntimeError(f"{mode} child failed (rc {proc.returncode}): {tail}")
    return started, err, out


async def _trace(tree: Path, ctx: _Context) -> tuple[list[str], dict[str, str]]:
    """The module set of `connect` from `tree`: (import order, module states)."""
    _started, err, out = await _connect_child("trace", tree, ctx)
    states = dict(line.split("\t") for line in out.read_text().splitlines())
    return parse_importtime(err), states


async def _ping(tree: Path, ctx: _Context) -> tuple[float, int, list[str]]:
    """(seconds from spawning the child to its first ping reply, its VmHWM kB then, which
    bindings of the system's OpenSSL it had loaded by then)."""
    started, _err, out = await _connect_child("ping", tree, ctx)
    replied, hwm, loaded = out.read_text().strip().split("\t")
    return float(replied) - started, int(hwm), [m for m in loaded.split(",") if m != "-"]


@dataclass(frozen=True, slots=True)
class _Context:
    proto: str
    work: Path
    pyc: Path
    pki: PKI


class Step(NamedTuple):
    """One group of one measuring child: its imports' wall and CPU time, RSS after them."""

    group: str
    wall_ms: float
    cpu_ms: float
    rss_kb: int


async def _measure(tree: Path, plan_file: Path, ctx: _Context) -> list[Step]:
    out = ctx.work / f"measure-{tree.name}.txt"
    with trio.fail_after(CHILD_TIMEOUT):
        await trio.run_process([sys.executable, "-P", str(CHILD), "measure", str(plan_file), str(out)],
                               env=_child_env(tree, ctx.pyc), capture_stdout=True, capture_stderr=True)
    rows = []
    for line in out.read_text().splitlines():
        group, wall, cpu, kb = line.split("\t")
        if group == "failed":
            raise RuntimeError(f"{tree}: module {wall} did not import on its own")
        rows.append(Step(group, float(wall), float(cpu), int(kb)))
    return rows


def summarize(steps: list[tuple[str, str]], states: dict[str, str], rounds: list[list[Step]],
              pings: list[tuple[float, int, list[str]]]) -> dict[str, Any]:
    """Medians over the rounds: per group import wall and CPU ms, RSS added (MB); start →
    first ping and the peak RSS then."""
    def med(values: list[float]) -> float:
        return round(statistics.median(values), 2)

    counts = Counter(g for g, _m in steps)
    unused = [m for _g, m in steps if states.get(m) == "unused"]
    idle = Counter(top_level(m) for m in unused)
    packages = []
    for i, first in enumerate(rounds[0][1:], start=1):
        packages.append({
            "package": first.group, "modules": counts[first.group], "unused": idle[first.group],
            "import_ms": med([r[i].wall_ms for r in rounds]),
            "import_cpu_ms": med([r[i].cpu_ms for r in rounds]),
            "rss_mb": med([(r[i].rss_kb - r[i - 1].rss_kb) / 1024 for r in rounds]),
        })
    walls = [sum(row.wall_ms for row in r) for r in rounds]
    return {
        "modules": len(steps),
        "baseline_rss_mb": med([r[0].rss_kb / 1024 for r in rounds]),
        "import_ms": med(walls),
        "import_ms_min": round(min(walls), 2),
        "import_cpu_ms": med([sum(row.cpu_ms for row in r) for r in rounds]),
        "rss_after_imports_mb": med([r[-1].rss_kb / 1024 for r in rounds]),
        "start_to_ping_s": round(statistics.median(p[0] for p in pings), 4),
        "peak_rss_at_ping_mb": med([p[1] / 1024 for p in pings]),
        "system_openssl_modules": sorted({m for p in pings for m in p[2]}),
        "packages": packages,
        "unused_modules": unused,
        "rounds": len(rounds),
    }


def format_report(trees: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, t in trees.items():
        lines += [f"{name}: {t['modules']} modules imported before the first ping; interpreter + site "
                  f"{t['baseline_rss_mb']:.1f} MB; imports {t['import_ms']:.1f} ms wall (fastest "
                  f"{t['import_ms_min']:.1f}), {t['import_cpu_ms']:.1f} ms CPU; RSS after them "
                  f"{t['rss_after_imports_mb']:.1f} MB; start → first ping {t['start_to_ping_s']:.3f} s, "
                  f"peak RSS then {t['peak_rss_at_ping_mb']:.1f} MB (medians of {t['rounds']}); "
                  f"the system's OpenSSL {_openssl(t['system_openssl_modules'])}",
                  "| package | modules | unused | import ms wall | CPU | RSS +MB |", "|---|---|---|---|---|---|"]
        lines += [f"| {p['package']} | {p['modules']} | {p['unused']} | {p['import_ms']:.1f} | "
                  f"{p['import_cpu_ms']:.1f} | {p['rss_mb']:.2f} |" for p in t["packages"]]
        lines.append(f"imported, none of their functions ran before the first ping ({len(t['unused_modules'])}):")
        by_package: dict[str, list[str]] = {}
        for m in t["unused_modules"]:
            by_package.setdefault(top_level(m), []).append(m)
        lines += [f"  {g}: {' '.join(ms)}" for g, ms in by_package.items()] + [""]
    return "\n".join(lines)


def _openssl(loaded: list[str]) -> str:
    return f"loaded ({', '.join(loaded)})" if loaded else "not loaded"


async def _run(trees: dict[str, Path], args: argparse.Namespace, ctx: _Context) -> dict[str, Any]:
    traced = {name: await _trace(tree, ctx) for name, tree in trees.items()}
    steps: dict[str, list[tuple[str, str]]] = {}
    for name in trees:
        steps[name] = plan(*traced[name])
        (ctx.work / f"plan-{name}.txt").write_text("".join(f"{g}\t{m}\n" for g, m in steps[name]))
    rounds: dict[str, list[list[Step]]] = {name: [] for name in trees}
    pings: dict[str, list[tuple[float, int, list[str]]]] = {name: [] for name in trees}
    for i in range(args.rounds + 1):  # round 0 warms the bytecode cache, not counted
        for name, tree in (trees.items() if i % 2 == 0 else reversed(trees.items())):
            result = await _measure(tree, ctx.work / f"plan-{name}.txt", ctx)
            ping = await _ping(tree, ctx)
            if i:
                rounds[name].append(result)
                pings[name].append(ping)
    return {name: summarize(steps[name], traced[name][1], rounds[name], pings[name]) for name in trees}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    here = Path(__file__).resolve().parents[2]
    trees = {"this": here} | ({"base": Path(args.base).resolve()} if args.base else {})
    from trivpn.testing.pki import generate_pki

    with tempfile.TemporaryDirectory(prefix="trivpn-startup-") as tmp:
        ctx = _Context(args.proto, Path(tmp), Path(tempfile.gettempdir()) / "trivpn-bench-startup-pyc",
                       generate_pki())
        report = trio.run(_run, trees, args, ctx)
    print(format_report(report))
    if args.json:
        doc = {"benchmark": "startup", "proto": args.proto, "python": sys.version.split()[0],
               "trees": {n: str(t) for n, t in trees.items()}, "results": report, "ok": True}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0
