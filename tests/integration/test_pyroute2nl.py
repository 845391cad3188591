"""The privileged helper's rtnetlink over pyroute2 does what trivpn's own client does.

In a fresh namespace with a TUN interface nobody reads, the same sequence of calls (link up and MTU,
addresses v4/v6/point-to-point, routes with gateway and metric, lookups, dumps, then the
deletions) runs once through `trivpn.tun.rtnl.RtnlSocket` and once through
`trivpn.tun.pyroute2nl.Pyroute2Socket`; what the calls return and what `ip` shows of the
kernel's state after the additions must be the same, and after the deletions the state must
be back to where it started.
"""

from __future__ import annotations

import json
import sys

import pytest

from trivpn.testing.netns import NetnsPair

pytestmark = pytest.mark.root

SCRIPT = r"""
import json, subprocess, sys
from trivpn.tun.rtnl import RtnlSocket, NetlinkError
from trivpn.tun.pyroute2nl import Pyroute2Socket

def state():
    return [subprocess.run(["ip", *a], capture_output=True, text=True).stdout
            for a in (["-4", "addr", "show", "dev", "dum0"], ["-6", "addr", "show", "dev", "dum0", "scope", "global"],
                      ["-4", "route"], ["-6", "route", "show", "dev", "dum0"])]

def run(make):
    out = {}
    with make() as nl:
        link = nl.get_link("dum0")
        out["missing"] = nl.get_link("nosuch0")
        nl.set_link(link.index, mtu=1400, up=True)
        nl.add_addr(link.index, "10.77.0.2", 24, broadcast="10.77.0.255")
        nl.add_addr(link.index, "10.78.0.6", 32, peer="10.78.0.5")
        nl.add_addr(link.index, "fd00:77::2", 64)
        nl.add_route("10.10.0.0", 16, oif=link.index, gateway="10.77.0.1")
        nl.add_route("10.9.0.0", 16, oif=link.index, priority=5)
        nl.add_route("0.0.0.0", 0, oif=link.index, gateway="10.77.0.1", priority=50)
        try:
            nl.add_route("10.9.0.0", 16, oif=link.index, priority=5)
        except NetlinkError as exc:
            out["duplicate_errno"] = exc.code
        out["route"] = repr(nl.get_route("10.10.3.4"))
        out["default"] = repr(nl.default_route4())
        out["addresses"] = sorted(nl.addresses4(link.index))
        out["link"] = repr(nl.get_link("dum0"))
        out["added"] = state()
        nl.del_route("0.0.0.0", 0, oif=link.index, gateway="10.77.0.1", priority=50)
        nl.del_route("10.9.0.0", 16, oif=link.index, priority=5)
        nl.del_route("10.10.0.0", 16, oif=link.index, gateway="10.77.0.1")
        nl.del_addr(link.index, "fd00:77::2", 64)
        nl.del_addr(link.index, "10.78.0.6", 32, peer="10.78.0.5")
        nl.del_addr(link.index, "10.77.0.2", 24)
        nl.set_link(link.index, mtu=1500, up=False)
    out["after"] = state()
    return out

before = state()
print(json.dumps({"before": before, "rtnl": run(RtnlSocket), "pyroute2": run(Pyroute2Socket)}, default=repr))
"""


def test_pyroute2_socket_matches_trivpns_rtnetlink_client(netns: NetnsPair) -> None:
    netns.client.run(["ip", "tuntap", "add", "dev", "dum0", "mode", "tun"])  # no dummy module here
    r = netns.client.run([sys.executable, "-c", SCRIPT], check=False, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    ours, theirs = doc["rtnl"], doc["pyroute2"]
    assert ours["missing"] is None and theirs["missing"] is None
    assert ours["duplicate_errno"] == theirs["duplicate_errno"] == 17  # EEXIST
    for key in ("route", "default", "addresses", "link", "added"):
        assert ours[key] == theirs[key], key
    assert "10.78.0.6 peer 10.78.0.5/32" in ours["added"][0]
    assert "10.9.0.0/16 dev dum0 proto static metric 5" in ours["added"][2]
    assert ours["after"] == theirs["after"] == doc["before"]
