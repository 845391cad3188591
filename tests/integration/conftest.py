"""Fixtures for tests against Debian's real openvpn, in network namespaces.

* `pki` (session): one generated CA / server / client PKI plus a static key.
* `netns` (function): a fresh `NetnsPair`, always deleted afterwards.
* `openvpn_server` (function): a factory `start(opts) -> OpenVPNServer` in `netns.server`;
  every server is stopped at teardown, and its log is attached to the report of a failed test.

Tests marked `root` need root, `ip netns`, /dev/net/tun and Debian's `openvpn`. Without them
they are skipped with a loud reason, except when CI=true: there they fail, so a CI machine
that lost its capabilities can never go green by silently skipping the real-peer tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from trivpn.testing.netns import NetnsPair, netns_pair
from trivpn.testing.ovpn_server import OpenVPNServer, ServerOptions
from trivpn.testing.pki import PKI, generate_pki

GATE_REASON = "needs root, ip netns and Debian's openvpn: run as root or see README"
#: Characters of each server log attached to a failed test's report.
REPORT_LOG_CHARS = 6000

_servers_key = pytest.StashKey[list[OpenVPNServer]]()
_skipped_key = pytest.StashKey[int]()


def _missing_capability() -> str | None:
    """Why root tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "not running as root"
    for tool in ("ip", "openvpn", "ping"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found on PATH"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    try:
        r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns list` failed: {exc}"
    if r.returncode != 0:
        return f"`ip netns list` failed: {r.stderr.strip()}"
    return None


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


_gate_failures_key = pytest.StashKey[str]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root_items = [item for item in items if item.get_closest_marker("root") is not None]
    if not root_items:
        return
    missing = _missing_capability()
    if missing is None:
        return
    reason = f"{GATE_REASON} ({missing})"
    if _in_ci():
        # Never skip in CI: `_root_gate` below fails each of these tests instead.
        for item in root_items:
            item.stash[_gate_failures_key] = reason
        return
    for item in root_items:
        item.add_marker(pytest.mark.skip(reason=reason))
    config.stash[_skipped_key] = len(root_items)


@pytest.fixture(autouse=True)
def _root_gate(request: pytest.FixtureRequest) -> None:
    """Fail (CI=true) a root test whose requirements are missing, before it touches anything."""
    reason = request.node.stash.get(_gate_failures_key, None)
    if reason is not None:
        pytest.fail(f"CI=true, so not skipping: {reason}", pytrace=False)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    skipped = config.stash.get(_skipped_key, 0)
    if skipped:
        terminalreporter.section("integration tests NOT RUN", sep="!", red=True, bold=True)
        terminalreporter.write_line(
            f"{skipped} test(s) against the real openvpn were SKIPPED: {GATE_REASON} "
            f"({_missing_capability()})",
            red=True,
            bold=True,
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.failed and report.when in ("setup", "call"):
        for server in item.stash.get(_servers_key, []):
            report.sections.append(
                (
                    f"openvpn server log ({server.opts.proto}, {server.opts.wrap})",
                    server.log_text()[-REPORT_LOG_CHARS:],
                )
            )
    return report


@pytest.fixture(scope="session")
def pki() -> PKI:
    return generate_pki()


@pytest.fixture
def netns() -> Iterator[NetnsPair]:
    with netns_pair() as pair:
        yield pair


@pytest.fixture
def openvpn_server(
    request: pytest.FixtureRequest,
    pki: PKI,
    netns: NetnsPair,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[ServerOptions], OpenVPNServer]]:
    servers: list[OpenVPNServer] = []
    request.node.stash[_servers_key] = servers

    def start(opts: ServerOptions) -> OpenVPNServer:
        workdir = Path(tmp_path_factory.mktemp("openvpn-server"))
        server = OpenVPNServer(
            netns.server,
            pki,
            opts,
            workdir,
            listen_v4=netns.server_v4,
            listen_v6=netns.server_v6,
        )
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
