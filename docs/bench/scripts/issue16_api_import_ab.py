"""One-off (issue 16): what `trivpn ping` (and an app calling `trivpn.connect`) imports
through `trivpn.api`, for two trees alternately.

Why: `trivpn ping` imports `trivpn.api`, whose package `__init__` imported the server half
(`trivpn.api.server` and with it the whole server package) for every client. Each round
runs a fresh interpreter per tree that first imports what both trees share (trio,
pyOpenSSL, cryptography.x509, as `trivpn connect` does), then times `import trivpn.api`
and counts the modules it added. Medians, and how many rounds the tree in the working
directory was faster.

Usage (no root), from the project root:
    python3 docs/bench/scripts/issue16_api_import_ab.py BASE_TREE ROUNDS OUT.json
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CODE = (
    "import sys, time\n"
    "import trivpn.lazystdlib as lazy; lazy.defer()\n"
    "import trio, OpenSSL.SSL, cryptography.x509\n"
    "n = len(sys.modules); t = time.perf_counter()\n"
    "import trivpn.api\n"
    "print((time.perf_counter() - t) * 1000, len(sys.modules) - n,"
    " sum(m.startswith('trivpn.server') for m in sys.modules))\n"
)


def run(tree: Path, pyc: Path) -> tuple[float, int, int]:
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONPYCACHEPREFIX=str(pyc / tree.name))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    out = subprocess.run([sys.executable, "-P", "-c", CODE], env=env, capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    return float(out[0]), int(out[1]), int(out[2])


def main() -> None:
    base, rounds, out = Path(sys.argv[1]).resolve(), int(sys.argv[2]), Path(sys.argv[3])
    this = Path.cwd().resolve()
    runs: dict[str, list[tuple[float, int, int]]] = {"this": [], "base": []}
    with tempfile.TemporaryDirectory() as tmp:
        pyc = Path(tmp)
        run(this, pyc), run(base, pyc)  # warm-up: bytecode caches
        for r in range(rounds):
            for name, tree in ([("this", this), ("base", base)] if r % 2 == 0 else [("base", base), ("this", this)]):
                runs[name].append(run(tree, pyc))
    summary = {name: {"import_ms_median": statistics.median(x[0] for x in rs), "modules": rs[0][1],
                      "server_modules": rs[0][2]} for name, rs in runs.items()}
    summary["this_faster_rounds"] = sum(a[0] < b[0] for a, b in zip(runs["this"], runs["base"], strict=True))
    print(json.dumps(summary, indent=1))
    out.write_text(json.dumps({"script": "docs/bench/scripts/issue16_api_import_ab.py", "base": str(base),
                               "rounds": rounds, "summary": summary, "runs": runs}, indent=1))


main()
