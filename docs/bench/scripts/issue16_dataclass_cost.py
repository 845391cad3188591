"""One-off (issue 16): how much of `trivpn connect`'s import time is dataclasses building
their methods. Runs fresh children (python -P, PYTHONPATH=TREE) that wrap the standard
library's `dataclasses._process_class` with a timer, then import the client's module set;
prints per round: classes built, ms inside dataclass creation, whole import ms, and the
ten most expensive classes. Needs no root.

    python3 docs/bench/scripts/issue16_dataclass_cost.py [TREE] [--rounds N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r'''
import sys, time, json
t_all = time.perf_counter()
import dataclasses
orig = dataclasses._process_class
rows = []
def timed(cls, *a, **k):
    t = time.perf_counter()
    r = orig(cls, *a, **k)
    rows.append((cls.__module__ + "." + cls.__qualname__, (time.perf_counter() - t) * 1000,
                 len(cls.__dataclass_fields__), bool(cls.__dataclass_params__.frozen)))
    return r
dataclasses._process_class = timed
import trivpn.lazystdlib
trivpn.lazystdlib.defer()
t0 = time.perf_counter()
for name in sys.argv[1].split(","):
    __import__(name)
total = (time.perf_counter() - t0) * 1000
mods = sorted(m for m in sys.modules if m.startswith("trivpn"))
print(json.dumps({"import_ms": total, "rows": rows, "trivpn_modules": len(mods)}))
'''

#: what `trivpn connect` imports before its first packet (the CLI's lazy imports included)
CONNECT = ",".join([
    "trivpn.cli", "trivpn.client", "trivpn.engine", "trivpn.session.clientstack",
    "trivpn.datachannel.fastpath", "trivpn.session.netapply", "trivpn.session.killswitch",
    "trivpn.session.dns", "trivpn.tun.netconfig",
])


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("tree", nargs="?", default=".")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json")
    a = p.parse_args()
    env = {**os.environ, "PYTHONPATH": str(Path(a.tree).resolve()),
           "PYTHONPYCACHEPREFIX": "/tmp/issue16-dc-pycache"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    runs = []
    for i in range(a.rounds + 1):  # the first fills the bytecode cache
        out = subprocess.run([sys.executable, "-P", "-c", CHILD, CONNECT], env=env,
                             capture_output=True, text=True, check=True).stdout
        if i:
            runs.append(json.loads(out))
    dc = [sum(r[1] for r in run["rows"]) for run in runs]
    imp = [run["import_ms"] for run in runs]
    n = len(runs[0]["rows"])
    frozen = sum(1 for r in runs[0]["rows"] if r[3])
    print(f"{sys.executable}: {runs[0]['trivpn_modules']} trivpn modules, {n} dataclasses "
          f"({frozen} frozen)")
    print(f"dataclass creation: median {statistics.median(dc):.1f} ms of "
          f"{statistics.median(imp):.1f} ms imports ({statistics.median(dc) / statistics.median(imp):.0%}); "
          f"per round {', '.join(f'{x:.1f}' for x in dc)}")
    per: dict[str, list[float]] = {}
    for run in runs:
        for name, ms, _f, _fr in run["rows"]:
            per.setdefault(name, []).append(ms)
    top = sorted(per.items(), key=lambda kv: -statistics.median(kv[1]))[:10]
    for name, ms in top:
        print(f"  {statistics.median(ms):6.2f} ms  {name}")
    if a.json:
        Path(a.json).write_text(json.dumps({"python": sys.executable, "runs": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
