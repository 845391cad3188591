"""`up`/`route-up`/`down` scripts of `trivpn connect` against Debian's openvpn client.

The same profile (with `script-security 2` and the same dump script) runs first under
Debian's openvpn 2.6 client, then under `trivpn connect`, in the same client namespace
against the same real server. The script writes its arguments and environment; the test
compares the variable names (all of OpenVPN's must be there) and the values that do not
depend on the process (pid, start time, the TUN's number, log redirection).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.routing import internet_shape, reference_client

from trivpn.testing.netns import NetnsPair
from trivpn.testing.ovpn_server import OpenVPNServer, ServerOptions, client_profile
from trivpn.testing.pki import PKI
from trivpn.testing.process import read_until, rest_of_output, stop_process, wait_until

pytestmark = pytest.mark.root

PUSH = ['push "route 10.211.0.0 255.255.0.0"', 'push "dhcp-option DNS 10.8.0.53"',
        'push "dhcp-option DOMAIN example.test"', 'push "dns server 1 address 10.8.0.99"',
        'push "dns search-domains pushed.test"']
#: values that differ between two processes by nature
VOLATILE = {"daemon_pid", "daemon_start_time", "daemon_log_redirect", "dev", "untrusted_port"}
#: what the shell itself adds to `env` output
SHELL_VARS = {"PWD", "SHLVL", "_", "OLDPWD"}


def _dump_script(tmp_path: Path, out: Path) -> Path:
    script = tmp_path / "dump.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'{{ echo "ARGS=$*"; env; }} | sort > "{out}/$script_type"\n'
    )
    script.chmod(0o755)
    return script


def _read(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name not in SHELL_VARS:
            env[name] = value
    if "ARGS" in env and "dev" in env:  # the TUN's name (tun0 / tvpn0) is the process's choice
        env["ARGS"] = env["ARGS"].replace(env["dev"], "DEV", 1)
    return env


def test_up_script_environment_matches_openvpns(pki: PKI, netns: NetnsPair, tmp_path: Path) -> None:
    remote = internet_shape(netns)
    opts = ServerOptions(proto="udp", wrap="tls-crypt", extra=PUSH)
    server = OpenVPNServer(netns.server, pki, opts, tmp_path / "server", listen_v4=remote)
    server.start()
    theirs_dir, ours_dir = tmp_path / "theirs", tmp_path / "ours"
    theirs_dir.mkdir()
    ours_dir.mkdir()
    try:
        profile = tmp_path / "client.ovpn"
        for out in (theirs_dir, ours_dir):
            script = _dump_script(tmp_path, out)
            profile.write_text(client_profile(pki, opts, remote, extra=[
                "script-security 2", f"up {script}", f"route-up {script}", f"down {script}",
                f"ipchange {script}", "dhcp-option DOMAIN-SEARCH profile.test",
                "setenv FOO bar", "verb 3",
            ]))
            if out is theirs_dir:
                with reference_client(netns, profile, tmp_path / "openvpn-client.log"):
                    wait_until((out / "route-up").exists, 10, "openvpn route-up")
                continue
            proc = netns.client.popen([sys.executable, "-m", "trivpn", "connect", str(profile), "--no-dns"],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            try:
                read_until(proc, "tunnel up", 30)
                wait_until((out / "route-up").exists, 10, "trivpn route-up")
                proc.send_signal(signal.SIGTERM)  # as reference_client stops openvpn
                assert proc.wait(timeout=15) == 0, rest_of_output(proc)
            finally:
                stop_process(proc)
    finally:
        server.stop()
    wait_until(lambda: (theirs_dir / "down").exists(), 10, "openvpn down")
    for kind in ("ipchange", "up", "route-up", "down"):
        theirs, ours = _read(theirs_dir / kind), _read(ours_dir / kind)
        missing = sorted(set(theirs) - set(ours))
        assert not missing, f"{kind}: trivpn lacks {missing}"
        differ = {k: (theirs[k], ours[k]) for k in theirs if k not in VOLATILE and theirs[k] != ours[k]}
        assert not differ, f"{kind}: values differ (openvpn, trivpn): {differ}"
    up = _read(ours_dir / "up")
    assert up["script_type"] == "up"
    # 2.6's pushed `dns` replaces the pushed dhcp-option DNS; the profile's own line is gone
    assert [up.get(f"foreign_option_{i}") for i in (1, 2, 3, 4)] == [
        "dhcp-option DOMAIN example.test", "dhcp-option DNS 10.8.0.99",
        "dhcp-option DOMAIN-SEARCH pushed.test", None]
    assert up["dns_server_1_address_1"] == "10.8.0.99" and up["dns_search_domain_1"] == "pushed.test"
    ipchange = _read(ours_dir / "ipchange")
    assert ipchange["ARGS"] == f"[AF_INET]{remote} 1194"
    assert ipchange["foreign_option_1"] == "dhcp-option DOMAIN-SEARCH profile.test"
    assert up["ARGS"].split()[1:] == ["1500", "0", up["ifconfig_local"], up["ifconfig_netmask"], "init"]
    assert up["route_network_1"] == "10.211.0.0" and up["common_name"] and up["FOO"] == "bar"
