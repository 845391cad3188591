"""`trivpn.lazystdlib`: the command line keeps the system's OpenSSL out until someone uses it.

Run in fresh interpreters (`-P`, nothing imported before trivpn), as `trivpn connect` starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-P", "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                                    # run as root by CI: no caches in the checkout
                                                    "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_the_cli_imports_trio_and_the_client_stack_without_the_systems_openssl() -> None:
    out = _run(
        "import sys\n"
        "from trivpn import lazystdlib\n"
        "early = {n for n in lazystdlib.DEFERRED if n in sys.modules}  # the interpreter's site\n"
        "import trivpn.cli, trio\n"
        "import trivpn.engine, trivpn.tlssession.tls, trivpn.controlchannel.wrap, trivpn.session.dns\n"
        "print(sorted(m for m in ('_ssl', '_hashlib') if m in sys.modules),"
        " [n for n in lazystdlib.DEFERRED if n not in early and not lazystdlib.is_deferred(n)])\n"
    )
    assert out == "[] []"


def test_a_stand_in_becomes_the_real_module_at_its_first_use() -> None:
    out = _run(
        "import sys, trivpn.cli, trio, hashlib, hmac, ssl\n"
        "from trivpn import lazystdlib\n"
        "assert getattr(ssl, '__path__', None) is None and lazystdlib.is_deferred('ssl')  # probing loads nothing\n"
        "ctx = ssl.create_default_context()\n"
        "assert isinstance(ctx, sys.modules['ssl'].SSLContext) and not lazystdlib.is_deferred('ssl')\n"
        "assert trio._ssl._stdlib_ssl.SSLObject is sys.modules['ssl'].SSLObject  # trio's reference too\n"
        "mac = hmac.digest(b'key', b'message', 'sha256').hex()\n"
        "sha = hashlib.sha256(b'abc').hexdigest()\n"
        "print('_ssl' in sys.modules, '_hashlib' in sys.modules, mac[:16], sha[:16])\n"
    )
    assert out == "True True 6e9ef29b75fffc5b ba7816bf8f01cfea"


def test_a_forwarded_function_imports_its_module_at_the_first_call() -> None:
    out = _run(
        "import sys, trivpn.cli\n"
        "from trivpn import lazystdlib\n"
        "from cryptography import x509  # takes parseaddr from the stand-in at its import\n"
        "import email\n"
        "assert lazystdlib.is_deferred('email.utils') and 'email.charset' not in sys.modules\n"
        "assert email.utils is sys.modules['email.utils']  # `import email.utils` finds it\n"
        "name = x509.RFC822Name('ops@example.org')  # calls parseaddr\n"
        "from email.utils import formatdate, parseaddr\n"
        "print(lazystdlib.is_deferred('email.utils'), 'email.charset' in sys.modules, name.value,\n"
        "      parseaddr('Ops <ops@example.org>'), formatdate(0, usegmt=True),\n"
        "      email.utils.parseaddr is parseaddr)\n"
    )
    assert out == ("False True ops@example.org ('Ops', 'ops@example.org') "
                   "Thu, 01 Jan 1970 00:00:00 GMT True")


def test_star_import_from_a_stand_in_gets_the_real_names() -> None:
    out = _run(
        "import trivpn.cli\n"
        "from hmac import *\n"
        "print(sorted(n for n in ('compare_digest', 'digest', 'new') if n in globals()))\n"
    )
    assert out == "['compare_digest', 'digest', 'new']"


def test_defer_leaves_imported_modules_alone() -> None:
    from trivpn import lazystdlib

    before = sys.modules["json"] if "json" in sys.modules else __import__("json")
    lazystdlib.defer(("json",))
    assert sys.modules["json"] is before and not lazystdlib.is_deferred("json")


def test_a_module_this_python_lacks_gets_no_stand_in() -> None:
    from trivpn import lazystdlib

    name = "trivpn_no_such_module_for_lazystdlib"
    lazystdlib.defer((name,))
    assert name not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        __import__(name)


def test_resolve_loads_every_stand_in_before_a_privilege_drop() -> None:
    out = _run(
        "import sys\n"
        "from trivpn import lazystdlib\n"
        "import trivpn.cli, trio\n"
        "from trivpn.session.privdrop import _preload\n"
        "_preload()\n"
        "print(any(lazystdlib.is_deferred(n) for n in lazystdlib.DEFERRED), '_hashlib' in sys.modules,\n"
        "      'trivpn.datachannel.cbc' in sys.modules, sys.modules['hmac'].compare_digest(b'a', b'a'))\n"
    )
    assert out == "False True True True"


def test_threads_racing_to_a_stand_in_get_one_module() -> None:
    out = _run(
        "import sys, threading, trivpn.cli\n"
        "import ssl\n"
        "stand_in = ssl\n"
        "seen, go = [], threading.Barrier(8)\n"
        "def use():\n"
        "    go.wait()\n"
        "    seen.append(stand_in.SSLContext)\n"
        "threads = [threading.Thread(target=use) for _ in range(8)]\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join(30)\n"
        "print(len(seen), len(set(map(id, seen))), seen[0] is sys.modules['ssl'].SSLContext)\n"
    )
    assert out == "8 1 True"


def test_the_cli_starts_no_ldconfig_and_trio_still_names_its_threads() -> None:
    """`known_libraries`: trio's `find_library("pthread")` is answered without a child
    process (each run of `ldconfig -p` cost ≈ 2 ms of every start); the answer is one trio
    can load `pthread_setname_np` from."""
    if not _run("import os\ntry: print(bool(os.confstr('CS_GNU_LIBC_VERSION')))\nexcept ValueError: print(False)") == "True":
        pytest.skip("not glibc: the lookup is left as it was")
    out = _run(
        "import subprocess\n"
        "class NoChild:\n"
        "    def __init__(self, *a, **k): raise AssertionError(f'ran {a[0]}')\n"
        "subprocess.Popen = NoChild\n"
        "import trivpn.cli, trio\n"
        "from trio._core import _thread_cache\n"
        "print(_thread_cache.set_os_thread_name is not None)\n"
    )
    assert out == "True"


def test_known_libraries_answers_only_its_names_and_only_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes
    import ctypes.util
    import os

    from trivpn import lazystdlib

    asked: list[str] = []
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: asked.append(name) or f"lib{name}.so.9")
    monkeypatch.setattr(os, "confstr", lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert lazystdlib.known_libraries() is False  # musl: no CS_GNU_LIBC_VERSION
    assert ctypes.util.find_library("pthread") == "libpthread.so.9" and asked == ["pthread"]
    monkeypatch.setattr(os, "confstr", lambda name: "glibc 2.36")
    assert lazystdlib.known_libraries() is True and lazystdlib.known_libraries() is True  # once
    assert ctypes.util.find_library("pthread") == "libpthread.so.0"
    assert ctypes.util.find_library("z") == "libz.so.9" and asked == ["pthread", "z"]
    if os.path.exists("/lib/x86_64-linux-gnu/libc.so.6") or os.path.exists("/lib64/libc.so.6"):
        assert hasattr(ctypes.CDLL("libpthread.so.0"), "pthread_setname_np")
