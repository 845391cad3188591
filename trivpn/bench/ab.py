"""`python -m trivpn.bench ab [--base DIR] [--variant NAME:VAR=VALUE] [vpn options]`: old
against new, or one setting against another, in the same run.

Why: on a shared machine two benchmark runs minutes apart differ by more than most changes
are worth. This runs the `vpn` benchmark with one more client, `trivpn-base`: trivpn
imported from another source tree (`DIR`, e.g. `git worktree add /tmp/base <commit>` or
`git archive <commit> | tar -x -C /tmp/base`), alternating with the tree being measured and
OpenVPN's client round by round, so drift hits all of them alike. `--variant` (repeatable)
adds a client that is this tree's trivpn with one environment variable set, e.g.
`--variant trivpn-1t:TRIVPN_DATA_THREADS=1` for the one-thread data plane. Every `vpn`
option applies (`--quick`, `--cells`, `--rounds`, `--out`, `--clients`); `--clients`
defaults to trivpn, the baseline, the variants, openvpn.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from trivpn.bench import vpn

BASE = "trivpn-base"


def _err(msg: str) -> int:
    print(f"trivpn.bench ab: error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trivpn.bench ab", add_help=False)
    p.add_argument("--base", type=Path, default=None, help="source tree of the baseline trivpn")
    p.add_argument("--variant", action="append", default=[], help="NAME:VAR=VALUE")
    a, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    base = a.base.resolve() if a.base is not None else None
    if base is not None and not (base / "trivpn" / "__init__.py").is_file():
        return _err(f"{base} holds no trivpn package")
    variants: dict[str, tuple[str, str]] = {}
    for v in a.variant:
        name, _, assignment = v.partition(":")
        var, eq, value = assignment.partition("=")
        if not name.startswith("trivpn-") or not var or not eq or name in vpn.CLIENTS:
            return _err(f"--variant {v!r}: expected trivpn-NAME:VAR=VALUE with a new NAME")
        variants[name] = (var, value)
    if base is None and not variants:
        return _err("give --base DIR, --variant NAME:VAR=VALUE, or both")
    if not any(r == "--clients" or r.startswith("--clients=") for r in rest):
        names = ["trivpn", *([BASE] if base is not None else []), *variants, "openvpn"]
        rest += ["--clients", ",".join(names)]
    install(base, variants)
    return vpn.main(rest)


def base_env(base: Path) -> dict[str, str]:
    """What makes a child import trivpn from `base`. PYTHONSAFEPATH matters: `python -m` and
    `-c` put the current directory first on sys.path, so a benchmark started from a
    checkout would otherwise run that checkout's trivpn as the "baseline" too."""
    return {"PYTHONPATH": str(base), "PYTHONSAFEPATH": "1"}


def install(base: Path | None, variants: dict[str, tuple[str, str]] | None = None) -> None:
    """Teach the `vpn` benchmark the `trivpn-base` client (imports from `base`) and the
    variants (this tree, one environment variable set)."""
    extra: dict[str, dict[str, str]] = {n: {var: val} for n, (var, val) in (variants or {}).items()}
    if base is not None:
        extra[BASE] = base_env(base)
    for name in extra:
        vpn.CLIENT_FLAGS[name] = []
        if name not in vpn.CLIENTS:
            vpn.CLIENTS = (*vpn.CLIENTS, name)  # type: ignore[assignment]  # vpn: a 5-tuple
    spec_of = vpn._client_spec
    warm = vpn._warm_bytecode

    def client_spec(client: str, cell: vpn.Cell, profile: Path, target: str,
                    plan: vpn.Plan) -> dict[str, Any]:
        spec = spec_of(client, cell, profile, target, plan)
        if client in extra:
            spec["env"] = {**spec["env"], **extra[client]}
        return spec

    def warm_bytecode(plan: vpn.Plan) -> None:
        warm(plan)
        if base is None:
            return
        env = {**os.environ, **base_env(base)}
        for name, value in vpn._bytecode_env(plan).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        subprocess.run([sys.executable, "-c", vpn.WARM_IMPORTS], env=env, check=True, timeout=60)

    vpn._client_spec = client_spec
    vpn._warm_bytecode = warm_bytecode


if __name__ == "__main__":
    sys.exit(main())
