"""`trivpn pki` commands running at the same time on one DIR: the directory lock.

Each test widens the read-modify-write window (a short sleep after index.txt is read) so
that, without the lock, the lost update happens every time rather than now and then.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from helpers.logstate import kept_logging

import trivpn
from trivpn import cli
from trivpn.errors import ConfigError
from trivpn.pki import keys, ops, store

#: threads (or processes) racing on one DIR: enough to lose updates, few enough to be quick
RACERS = 8


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    root = tmp_path / "pki"
    ops.init(root, name="vpn.example.net")
    return root


@pytest.fixture
def slow_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reader of index.txt dawdles before going on to write it back."""
    read = store.Store.entries

    def entries(self: store.Store) -> list[store.Entry]:
        out = read(self)
        time.sleep(0.05)
        return out

    monkeypatch.setattr(store.Store, "entries", entries)


def _race(job: Callable[[int], object], n: int = RACERS) -> list[object]:
    """Run job(0..n-1) in n threads released together; results or exceptions, in order."""
    start = threading.Barrier(n, timeout=30)

    def one(i: int) -> object:
        start.wait()
        try:
            return job(i)
        except ConfigError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n), timeout=120))


def _index(root: Path) -> list[list[str]]:
    return [ln.split("\t") for ln in (root / "index.txt").read_text().splitlines() if not ln.startswith("#")]


@pytest.mark.usefixtures("slow_index")
def test_concurrent_issuances_all_end_in_the_index(pki: Path) -> None:
    issued = _race(lambda i: ops.client(pki, f"c{i}"))
    assert all(isinstance(r, ops.Issued) for r in issued), issued
    rows = {r[6]: int(r[1], 16) for r in _index(pki) if r[5] == "client"}
    assert rows == {f"c{i}": r.serial for i, r in enumerate(issued) if isinstance(r, ops.Issued)}
    assert ops.revoke(pki, "c2") == [rows["c2"]]  # every profile handed out can be revoked


@pytest.mark.usefixtures("slow_index")
def test_concurrent_issuances_of_one_name_make_one_certificate(pki: Path) -> None:
    results = _race(lambda _: ops.client(pki, "alice"))
    assert sum(isinstance(r, ops.Issued) for r in results) == 1, results
    assert all(isinstance(r, ops.Issued) or "already has a valid certificate" in str(r) for r in results)
    assert [r[6] for r in _index(pki)].count("alice") == 1


@pytest.mark.usefixtures("slow_index")
def test_concurrent_revokes_all_end_in_the_crl(pki: Path) -> None:
    serials = [ops.client(pki, f"c{i}").serial for i in range(RACERS)]
    assert _race(lambda i: ops.revoke(pki, f"c{i}")) == [[s] for s in serials]
    crl = x509.load_pem_x509_crl((pki / "crl.pem").read_bytes())
    assert sorted(r.serial_number for r in crl) == sorted(serials)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == RACERS + 1
    assert sorted(r[0] for r in _index(pki) if r[5] == "client") == ["R"] * RACERS


def test_concurrent_inits_make_one_consistent_pki(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two inits of one new DIR: one wins, the other refuses; never a mix of both.

    (Without the lock this fails only when both pass the emptiness check before either
    has created DIR/clients: often, not always.)
    """
    both = threading.Barrier(2, timeout=1)  # without the lock both get here, then write at once
    make_ca = keys.make_ca

    def meet_then_make_ca(*args: Any) -> Any:
        with contextlib.suppress(threading.BrokenBarrierError):  # with it, one waits in vain
            both.wait()
        return make_ca(*args)

    real = store.tempfile.mkstemp

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        time.sleep(0.05)  # between write()'s "does it exist?" and its rename
        return real(*args, **kwargs)

    monkeypatch.setattr(keys, "make_ca", meet_then_make_ca)
    monkeypatch.setattr(store, "tempfile", types.SimpleNamespace(mkstemp=mkstemp))
    root = tmp_path / "p"
    results = _race(lambda i: ops.init(root, name=f"s{i}.example.net"), n=2)
    errors = [r for r in results if isinstance(r, ConfigError)]
    assert len(errors) == 1 and "refusing to overwrite" in str(errors[0]), results
    ca = x509.load_pem_x509_certificate((root / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((root / "server.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    assert keys.load_key((root / "ca.key").read_text()).public_key() == ca.public_key()
    winner = server.subject.rfc4514_string().removeprefix("CN=")
    assert ca.subject.rfc4514_string() == f"CN=trivpn CA for {winner}"
    assert [r[6] for r in _index(root)] == [winner]


@pytest.fixture
def held(pki: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Another command holds DIR's lock; the wait is cut to a fraction of a second."""
    monkeypatch.setattr(store, "LOCK_WAIT_SECONDS", 0.3)
    fd = os.open(pki / store.LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@pytest.mark.usefixtures("held")
def test_a_held_lock_is_waited_for_a_bounded_time(pki: Path) -> None:
    index = (pki / "index.txt").read_text()
    crl = (pki / "crl.pem").read_text()
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="is busy: another 'trivpn pki' command still holds"):
        ops.client(pki, "alice")
    assert 0.3 <= time.monotonic() - t0 < 5
    with pytest.raises(ConfigError, match="is busy"):
        ops.revoke(pki, "vpn.example.net")
    assert (pki / "index.txt").read_text() == index and (pki / "crl.pem").read_text() == crl
    assert not (pki / "clients" / "alice.ovpn").exists()


@pytest.mark.usefixtures("held")
def test_a_held_lock_is_a_one_line_error(pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with kept_logging():
        assert cli.main(["pki", "client", str(pki), "alice"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is busy" in err[0], err


def test_a_lock_released_in_time_is_taken(pki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "LOCK_WAIT_SECONDS", 10.0)
    fd = os.open(pki / store.LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    release = threading.Timer(0.3, os.close, (fd,))
    release.start()
    try:
        assert ops.client(pki, "alice").profile.exists()
    finally:
        release.join(5)


def test_no_lock_file_outside_a_pki(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing"):
        ops.client(tmp_path, "alice")
    with pytest.raises(ConfigError, match="missing"):
        ops.revoke(tmp_path, "alice")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="missing"):
        ops.client(tmp_path / "nope", "alice")


def test_concurrent_cli_processes_all_end_in_the_index(pki: Path) -> None:
    """What the bug report ran: `trivpn pki client DIR cN &` several times over."""
    n = 4  # each a whole interpreter: fewer than RACERS, which still lost updates every time
    env = {**os.environ, "PYTHONPATH": str(Path(trivpn.__file__).resolve().parent.parent)}
    procs = [
        subprocess.Popen([sys.executable, "-m", "trivpn", "pki", "client", str(pki), f"c{i}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        for i in range(n)
    ]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, errs
    assert sorted(r[6] for r in _index(pki) if r[5] == "client") == sorted(f"c{i}" for i in range(n))
