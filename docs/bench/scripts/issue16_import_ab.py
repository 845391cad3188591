"""One-off (issue 16): import what `trivpn connect` imports (module lists from traces made by
issue16_connect_imports.py), alternately per tree, 12 rounds; median/min ms and RSS.
Usage: python3 issue16_import_ab.py TREE_A TRACE_A TREE_B TRACE_B"""
import os, subprocess, sys, statistics, re
pairs = [(sys.argv[i], sys.argv[i+1]) for i in range(1, len(sys.argv), 2)]  # tree, trace
res = {}
for rnd in range(12):
    for tree, trace in pairs:
        mods = sorted({l.split("|")[2].strip() for l in open(trace) if "trivpn" in l.split("|")[2] and "editable" not in l})
        code = "import time; t0=time.perf_counter()\n" + "".join(f"import {m}\n" for m in mods) + \
               "t=time.perf_counter()-t0\nimport re;s=open('/proc/self/status').read();print(t, re.search(r'VmRSS:\\s+(\\d+)',s).group(1))"
        env = dict(os.environ, PYTHONPATH=tree, PYTHONPYCACHEPREFIX="/tmp/dp2/pyc-ab")
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
        res.setdefault(tree, []).append((float(out[0]), int(out[1])))
for tree, v in res.items():
    ts = [x[0]*1000 for x in v[2:]]; rss = [x[1]/1024 for x in v[2:]]
    print(f"{tree}: import ms median {statistics.median(ts):.1f} min {min(ts):.1f}; RSS MB median {statistics.median(rss):.2f}")
