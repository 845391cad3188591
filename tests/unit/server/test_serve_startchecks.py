"""Start-up checks of `trivpn serve` (support.check_served and what it calls): a config
mistake that would otherwise fail every client, or let a revoked one in, is one line at start."""

from __future__ import annotations

import os
import pwd
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from helpers.profiles import shared_pki

from trivpn.errors import ConfigError
from trivpn.server.ccd import parse_ccd
from trivpn.server.config import parse_server_config
from trivpn.server.config_model import ServerConfig
from trivpn.server.crlfile import CRLFile
from trivpn.server.hub import Hub
from trivpn.server.pool_persist import parse_persist
from trivpn.server.pool_types import FixedAddressError, PoolExhausted
from trivpn.server.privdrop import access_problem
from trivpn.server.support import check_served
from trivpn.testing.pki import revoke
from trivpn.tlssession.crl import UNUSABLE_CRL

#: ids that own nothing on this host (the "others" bits apply to them)
STRANGER_UID, STRANGER_GID = 4_000_123, 4_000_321


def config(extra: str = "", server: str = "server 10.8.0.0 255.255.255.0") -> ServerConfig:
    pki = shared_pki()
    text = "\n".join(
        [
            server, "topology subnet", "dev tun", "dh none",
            f"<ca>\n{pki.ca_cert}</ca>", f"<cert>\n{pki.server_cert}</cert>",
            f"<key>\n{pki.server_key}</key>", extra,
        ]
    )
    return parse_server_config(text)


def refused(extra: str) -> str:
    with pytest.raises(ConfigError) as info:
        check_served(config(extra))
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def open_tree() -> Iterator[Path]:
    """A directory every user may search (pytest's tmp_path sits below a root-only one)."""
    with tempfile.TemporaryDirectory(prefix="trivpn-startchecks-") as name:
        path = Path(name)
        path.chmod(0o755)
        if access_problem(path, STRANGER_UID, STRANGER_GID, os.X_OK) is not None:
            pytest.skip(f"the directories above {path} are not searchable by every user")
        yield path


# ---- 1. crl-verify after the privilege drop ------------------------------------------------


def test_access_follows_the_mode_bits_of_every_component(open_tree: Path) -> None:
    pki_dir = open_tree / "pki"
    pki_dir.mkdir(mode=0o700)
    pki_dir.chmod(0o700)
    crl = pki_dir / "crl.pem"
    crl.write_text("x")
    crl.chmod(0o644)
    problem = access_problem(crl, STRANGER_UID, STRANGER_GID, os.R_OK)
    assert problem is not None and f"{pki_dir} is mode 0700" in problem
    pki_dir.chmod(0o711)  # searchable is enough for a directory on the way
    assert access_problem(crl, STRANGER_UID, STRANGER_GID, os.R_OK) is None
    crl.chmod(0o600)
    problem = access_problem(crl, STRANGER_UID, STRANGER_GID, os.R_OK)
    assert problem is not None and f"{crl} is mode 0600" in problem
    st = crl.stat()
    crl.chmod(0o640)  # the group's bits for a member of the file's group
    assert access_problem(crl, STRANGER_UID, st.st_gid, os.R_OK) is None
    crl.chmod(0o044)  # the owner gets the owner's bits, even when others may read
    assert access_problem(crl, st.st_uid, STRANGER_GID, os.R_OK) is not None
    assert access_problem(open_tree / "missing", STRANGER_UID, STRANGER_GID, os.R_OK) is not None


def test_a_crl_the_dropped_user_cannot_reread_is_refused_at_start(open_tree: Path) -> None:
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this host")
    pki_dir = open_tree / "pki"
    pki_dir.mkdir()
    pki_dir.chmod(0o700)  # as `trivpn pki init` makes it
    crl = pki_dir / "crl.pem"
    crl.write_text(revoke(shared_pki()))
    crl.chmod(0o644)
    message = refused(f"crl-verify {crl}\nuser nobody")
    assert "option 'crl-verify'" in message and str(crl) in message and "user nobody" in message
    assert f"{pki_dir} is mode 0700" in message
    pki_dir.chmod(0o755)
    assert check_served(config(f"crl-verify {crl}\nuser nobody")) == []
    crl.chmod(0o600)  # what `trivpn pki revoke` writes
    assert "crl.pem is mode 0600" in refused(f"crl-verify {crl}\nuser nobody")
    assert check_served(config(f"crl-verify {crl}")) == []  # no drop: root reads it


# ---- 2. a key that is not the certificate's -------------------------------------------------


def test_a_key_that_does_not_match_the_cert_is_refused_at_start() -> None:
    pki = shared_pki()
    message = refused(f"<key>\n{pki.ca_key}</key>")  # the later key wins, as `key ca.key`
    assert "options 'cert'/'key'" in message and "do not match" in message
    assert check_served(config()) == []


# ---- 3. data-ciphers without one cipher trivpn speaks ----------------------------------------


def parse_error(extra: str) -> str:
    with pytest.raises(ConfigError) as info:
        config(extra)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_data_ciphers_need_one_supported_cipher() -> None:
    message = parse_error("data-ciphers FOO-BAR")
    assert "option 'data-ciphers'" in message and "FOO-BAR" in message and "AES-256-GCM" in message
    assert "no cipher trivpn supports in BF-CBC (use one of" in parse_error("data-ciphers BF-CBC")
    message = parse_error("ncp-ciphers FOO-BAR:BF-CBC")
    assert "option 'ncp-ciphers'" in message and "in FOO-BAR, BF-CBC" in message
    cfg = config("data-ciphers FOO-BAR:AES-128-GCM:?BAZ-GCM")
    assert cfg.data_ciphers == ("AES-128-GCM",)
    assert any("FOO-BAR, BAZ-GCM not supported, ignored" in w for w in cfg.warnings)
    cfg = config("data-ciphers-fallback BF-CBC")
    assert any("'data-ciphers-fallback'" in w and "BF-CBC" in w for w in cfg.warnings)
    assert config("data-ciphers AES-256-GCM:AES-256-CBC").warnings == ()


# ---- 4. server ... nopool --------------------------------------------------------------------


def test_nopool_hands_out_no_dynamic_address(tmp_path: Path) -> None:
    cfg = config(f"client-config-dir {tmp_path}", server="server 10.8.0.0 255.255.255.0 nopool")
    assert cfg.pool is None
    hub = Hub(cfg, None)  # type: ignore[arg-type]  # the TUN side is not used here
    with pytest.raises(PoolExhausted, match="no dynamic pool"):
        hub.take_lease("carol", None, 0.0)
    lease = hub.take_lease("dave", parse_ccd("ifconfig-push 10.8.0.50 255.255.255.0\n"), 0.0)
    assert lease.ipv4 is not None and str(lease.ipv4.address) == "10.8.0.50"
    with pytest.raises(FixedAddressError, match="already given"):
        hub.take_lease("erin", parse_ccd("ifconfig-push 10.8.0.50 255.255.255.0\n"), 0.0)
    with pytest.raises(FixedAddressError, match="outside the server network"):
        hub.take_lease("erin", parse_ccd("ifconfig-push 10.9.0.50 255.255.255.0\n"), 0.0)
    with pytest.raises(FixedAddressError, match="server's own"):
        hub.take_lease("erin", parse_ccd("ifconfig-push 10.8.0.1 255.255.255.0\n"), 0.0)
    assert check_served(cfg) == []
    with pytest.raises(ConfigError) as info:
        check_served(replace(cfg, client_config_dir=None))
    message = str(info.value)
    assert "no dynamic pool" in message and "client-config-dir" in message


# ---- 5. a manual pool that holds the server's own address -----------------------------------


def test_the_dynamic_pool_never_gives_out_the_servers_address() -> None:
    manual = "mode server\ntls-server\nifconfig 10.8.0.1 255.255.255.0"
    hub = Hub(config("ifconfig-pool 10.8.0.1 10.8.0.3", server=manual), None)  # type: ignore[arg-type]
    got = {str(lease.ipv4.address) for lease in (hub.pool.acquire(n) for n in ("a", "b")) if lease.ipv4}
    assert got == {"10.8.0.2", "10.8.0.3"} and hub.pool.in_use == 2
    with pytest.raises(PoolExhausted, match="all 2 addresses"):
        hub.pool.acquire("c")
    net30 = "mode server\ntls-server\nifconfig 10.8.0.1 10.8.0.2"
    hub = Hub(config("topology net30\nifconfig-pool 10.8.0.0 10.8.0.15", server=net30), None)  # type: ignore[arg-type]
    lease = hub.pool.acquire("a")
    assert lease.ipv4 is not None and str(lease.ipv4.address) == "10.8.0.6"  # not the server's /30
    v6 = "ifconfig-ipv6 fd00:9::1/64 fd00:9::2\nifconfig-ipv6-pool fd00:9::1/64"
    hub = Hub(config(v6), None)  # type: ignore[arg-type]
    leases = [hub.pool.acquire(n) for n in ("a", "b")]
    assert [str(lease.ipv6.address) for lease in leases if lease.ipv6] == ["fd00:9::2", "fd00:9::3"]
    with pytest.raises(FixedAddressError, match="server's own address"):  # the IPv6 server's slot
        hub.take_lease("c", parse_ccd("ifconfig-push 10.8.0.2 255.255.255.0\n"), 0.0)
    with pytest.raises(ConfigError, match="option 'ifconfig': topology subnet needs a netmask, not 10.8.0.2"):
        config("ifconfig-pool 10.8.0.4 10.8.0.15", server=net30)  # was a ValueError traceback


# ---- 6. paths OpenVPN checks at start --------------------------------------------------------


def test_missing_directories_and_scripts_are_refused_at_start(tmp_path: Path) -> None:
    message = refused("tmp-dir /nonexistent")
    assert message == "option 'tmp-dir': /nonexistent does not exist"
    (tmp_path / "f").write_text("x")
    assert refused(f"tmp-dir {tmp_path / 'f'}").endswith("is not a directory")
    message = refused("client-config-dir /nonexistent\nccd-exclusive")
    assert message == "option 'client-config-dir': /nonexistent does not exist"
    message = refused("script-security 2\nauth-user-pass-verify /nonexistent/script via-file")
    assert message == "option 'auth-user-pass-verify': /nonexistent/script does not exist"
    script = tmp_path / "connect.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    assert refused(f"script-security 2\nclient-connect \"{script} arg\"").endswith("is not executable")
    assert "no program" in refused("script-security 2\nlearn-address no-such-program-trivpn")
    script.chmod(0o755)
    ok = f"script-security 2\nclient-connect \"{script} arg\"\nlearn-address true\ntmp-dir {tmp_path}"
    assert check_served(config(f"{ok}\nclient-config-dir {tmp_path}")) == []


def test_after_the_drop_ccd_tmp_dir_and_scripts_must_be_reachable(open_tree: Path) -> None:
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this host")
    private = open_tree / "private"
    private.mkdir()
    private.chmod(0o700)
    script = private / "connect.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    for extra, option in (
        (f"client-config-dir {private}", "client-config-dir"),
        (f"tmp-dir {private}", "tmp-dir"),
        (f"script-security 2\nclient-connect {script}", "client-connect"),
    ):
        message = refused(f"{extra}\nuser nobody")
        assert message.startswith(f"option '{option}': user nobody") and f"{private} is mode 0700" in message
    private.chmod(0o755)
    assert "tmp-dir" in refused(f"tmp-dir {private}\nuser nobody")  # nobody cannot write there
    private.chmod(0o1777)
    extra = f"client-config-dir {private}\ntmp-dir {private}\nscript-security 2\nclient-connect {script}"
    assert check_served(config(f"{extra}\nuser nobody")) == []


# ---- 7. a status file that cannot be written --------------------------------------------------


def test_an_unwritable_status_file_is_refused_before_the_server_is_up(tmp_path: Path) -> None:
    assert refused(f"status {tmp_path}") == f"option 'status': {tmp_path} is a directory"
    message = refused("status /nonexistent/dir/status.log 1")
    assert message == "option 'status': /nonexistent/dir does not exist"
    assert check_served(config(f"status {tmp_path / 'status.log'} 1")) == []
    if os.geteuid() != 0:  # root may write anything: the mode bits only stop others
        (tmp_path / "status.log").write_text("")
        (tmp_path / "status.log").chmod(0o400)
        assert refused(f"status {tmp_path / 'status.log'}").startswith("option 'status': cannot write")


# ---- 8. two names with one address in ifconfig-pool-persist ---------------------------------


def test_two_names_sharing_a_persisted_address_are_both_named() -> None:
    hub = Hub(config(), None)  # type: ignore[arg-type]
    parsed = parse_persist(b"carol,10.8.0.2\ndave,10.8.0.2\nerin,10.8.0.3\n")
    warnings = hub.pool.load_persist(list(parsed.entries), False, 0.0)
    assert len(warnings) == 1 and "'carol' and 'dave' both have 10.8.0.2" in warnings[0]
    assert [(e.common_name, str(e.ipv4)) for e in hub.pool.persist_entries()] == [
        ("dave", "10.8.0.2"), ("erin", "10.8.0.3"),
    ]


# ---- a CRL file that failed to load is tried again -------------------------------------------


def test_a_crl_that_failed_to_load_is_read_again_once_fixed(tmp_path: Path) -> None:
    """A fixed file may keep its mtime and size (chmod changes neither): it was never taken
    up again, so a revocation stayed ignored until the next change of the file."""
    pki = shared_pki()
    first, second = revoke(pki), revoke(pki, pki.client_cert)
    path = tmp_path / "crl.pem"
    path.write_text(first)
    watch = CRLFile(str(path), first, pki.ca_cert)
    path.write_text("x" * len(second))  # unusable, the size of the good one
    stamp = path.stat().st_mtime_ns
    assert watch.current() == UNUSABLE_CRL  # fails closed meanwhile
    path.write_text(second)
    os.utime(path, ns=(stamp, stamp))  # same mtime, same size: what a chmod leaves
    assert watch.current() == second and watch.reloads == 1
