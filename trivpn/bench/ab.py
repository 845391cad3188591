"""`python -m trivpn.bench ab --base DIR [vpn options]`: old against new in the same run.

Why: on a shared machine two benchmark runs minutes apart differ by more than most changes
are worth. This runs the `vpn` benchmark with one more client, `trivpn-base`: trivpn
imported from another source tree (`DIR`, e.g. `git worktree add /tmp/base <commit>` or
`git archive <commit> | tar -x -C /tmp/base`), alternating with the tree being measured and
OpenVPN's client round by round, so drift hits all of them alike. Every `vpn` option
applies (`--quick`, `--cells`, `--rounds`, `--out`, `--clients`); `--clients` defaults to
`trivpn,trivpn-base,openvpn`.
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trivpn.bench ab", add_help=False)
    p.add_argument("--base", type=Path, required=True, help="source tree of the baseline trivpn")
    a, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    base = a.base.resolve()
    if not (base / "trivpn" / "__init__.py").is_file():
        print(f"trivpn.bench ab: error: {base} holds no trivpn package", file=sys.stderr)
        return 2
    if not any(r == "--clients" or r.startswith("--clients=") for r in rest):
        rest += ["--clients", f"trivpn,{BASE},openvpn"]
    install(base)
    return vpn.main(rest)


def install(base: Path) -> None:
    """Teach the `vpn` benchmark the `trivpn-base` client (imports from `base`)."""
    vpn.CLIENT_FLAGS[BASE] = []
    if BASE not in vpn.CLIENTS:
        vpn.CLIENTS = (*vpn.CLIENTS, BASE)  # type: ignore[assignment]  # vpn types it as 5-tuple
    spec_of = vpn._client_spec
    warm = vpn._warm_bytecode

    def client_spec(client: str, cell: vpn.Cell, profile: Path, target: str,
                    plan: vpn.Plan) -> dict[str, Any]:
        spec = spec_of(client, cell, profile, target, plan)
        if client == BASE:
            spec["env"] = {**spec["env"], "PYTHONPATH": str(base)}
        return spec

    def warm_bytecode(plan: vpn.Plan) -> None:
        warm(plan)
        env = {**os.environ, "PYTHONPATH": str(base)}
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
