"""One-off (issue 16, 2026-12-03): what trio's library lookup at import costs `trivpn connect`,
before and after `trivpn.lazystdlib.known_libraries()`.

trio names its worker threads through `pthread_setname_np`, which it finds with
`ctypes.util.find_library("pthread")`; on Linux that runs `/sbin/ldconfig -p` in a child.
For each tree, alternately, ROUNDS fresh interpreters import `trivpn.cli` (which imports
trio) under `-X importtime`; recorded per round: the self time of
`trio._core._thread_cache` (the module whose body makes the lookup), the cumulative time
of `trio`, and whether trio can still name threads. Then one run per tree under
`strace -f -e trace=execve` lists the programs the import executed.

Usage (from the project root): python3 issue16_ldconfig_lookup.py TREE_NEW TREE_OLD ROUNDS OUT.json
"""
import json
import os
import statistics
import subprocess
import sys

new, old, rounds, out_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
CODE = "import trivpn.cli\nimport trio._core._thread_cache as t\nprint(t.set_os_thread_name is not None)"


def env(tree):
    e = dict(os.environ, PYTHONPATH=tree, PYTHONPYCACHEPREFIX="/tmp/pyc-ldconfig")
    e.pop("PYTHONDONTWRITEBYTECODE", None)
    return e


def one(tree):
    p = subprocess.run([sys.executable, "-X", "importtime", "-c", CODE], env=env(tree),
                       capture_output=True, text=True, check=True, timeout=60, cwd="/")
    rows = {}
    for line in p.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2 and "[us]" not in line:
            self_us, cum_us, name = (x.strip() for x in line.removeprefix("import time:").split("|"))
            rows[name] = (int(self_us), int(cum_us))
    return rows["trio._core._thread_cache"][0] / 1000, rows["trio"][1] / 1000, p.stdout.strip() == "True"


runs = {"new": [], "old": []}
for r in range(rounds):
    order = [("new", new), ("old", old)] if r % 2 == 0 else [("old", old), ("new", new)]
    for name, tree in order:
        runs[name].append(one(tree))
execs = {}
for name, tree in (("new", new), ("old", old)):
    trace = f"/tmp/ldconfig-strace-{name}.txt"
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=execve", "-o", trace, sys.executable, "-c", CODE],
                   env=env(tree), check=True, capture_output=True, timeout=60, cwd="/")
    execs[name] = [line.split('"')[1] for line in open(trace) if "execve(" in line]
summary = {
    name: {
        "thread_cache_self_ms_median": round(statistics.median(x[0] for x in v), 3),
        "trio_cumulative_ms_median": round(statistics.median(x[1] for x in v), 1),
        "names_threads_every_round": all(x[2] for x in v),
        "programs_executed": execs[name],
    }
    for name, v in runs.items()
}
doc = {"rounds": rounds, "trees": {"new": new, "old": old}, "summary": summary, "runs": runs}
with open(out_path, "w") as f:
    json.dump(doc, f, indent=1)
print(json.dumps(summary, indent=1))
