"""One-off (issue 16): -X importtime self time of the imports round two made lazy, in the
baseline tree (PYTHONPATH below: a `git archive 27cfe47 trivpn` there), median of 7 runs."""
import subprocess, os, statistics, sys
groups = {
 "privdrop": ["trivpn.session.privdrop","trivpn.server.privdrop","json","json.decoder","json.encoder","json.scanner","_json","grp","pwd"],
 "scripts": ["trivpn.session.scripts","shlex"],
 "proxy": ["trivpn.networkio.proxy","trivpn.networkio.proxyhandshake"],
 "tcpfast": ["trivpn.datachannel.tcpfast","trivpn.networkio.splitter"],
 "tun.ip": ["trivpn.tun.ip"], "userspace": ["trivpn.tun.userspace"], "crl": ["trivpn.tlssession.crl"],
 "getpass": ["getpass","termios"], "serverrole": ["trivpn.tlssession.serverrole"], "framing+connect": ["trivpn.networkio.framing","trivpn.networkio.connect"],
}
res = {g: [] for g in groups}
env = dict(os.environ, PYTHONPATH="/tmp/startrss-base", PYTHONPYCACHEPREFIX="/tmp/trivpn-bench-startup-pyc/x")
env.pop("PYTHONDONTWRITEBYTECODE", None)
for i in range(8):
    err = subprocess.run([sys.executable, "-P", "-X", "importtime", "-c",
        "import trivpn.cli, trivpn.engine, trivpn.session.config, trivpn.tlssession.tls, getpass"],
        env=env, capture_output=True, text=True, cwd="/tmp").stderr
    selfus = {}
    for l in err.splitlines():
        if l.startswith("import time:") and l.count("|") == 2:
            p = l.split("|"); 
            try: selfus[p[2].strip()] = int(p[0].split(":")[1])
            except ValueError: pass
    if i == 0: continue
    for g, ms in groups.items():
        res[g].append(sum(selfus.get(m, 0) for m in ms) / 1000)
tot = 0
for g, v in res.items():
    m = statistics.median(v); tot += m
    print(f"{g}: {m:.2f} ms")
print("total", round(tot, 2))
