"""Legacy CBC + HMAC data channel against Debian's real openvpn 2.6 server (issue 4).

The server offers only a CBC cipher (`data-ciphers AES-256-CBC`, `auth SHA256`); the user's
profile lists the same. `python -m trivpn ping` must negotiate it (the server pushes
`cipher AES-256-CBC`), report it in the `tunnel up` line, and get every echo back with no
data packet dropped on either side.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from trivpn.testing.ovpn_server import ServerOptions, client_profile
from trivpn.testing.process import wait_for_text

pytestmark = pytest.mark.root

#: What openvpn 2.6 logs (at verb 4, as the test server runs) for each data packet whose
#: CBC HMAC does not verify.
HMAC_REFUSED = "Authenticate/Decrypt packet error: packet HMAC authentication failed"

CASES = {
    "udp-aes256cbc-sha256": ServerOptions(
        proto="udp", wrap="tls-crypt", data_ciphers="AES-256-CBC", auth="SHA256"
    ),
    "tcp-aes128cbc-sha1": ServerOptions(
        proto="tcp", wrap="tls-auth", data_ciphers="AES-128-CBC", auth="SHA1"
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_trivpn_ping_over_cbc(case: str, pki, netns, openvpn_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts = CASES[case]
    server = openvpn_server(opts)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, server.remote_host))
    r = netns.client.run(
        [sys.executable, "-m", "trivpn", "ping", str(profile), server.tunnel_v4, "-c", "5", "-i", "0.2"],
        check=False,
        timeout=90,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out + server.log_text()[-3000:]
    assert "5 packets transmitted, 5 received" in r.stdout, out
    up = next(ln for ln in out.splitlines() if "tunnel up" in ln)
    assert f"cipher {opts.data_ciphers}" in up, up
    assert "Traceback" not in out
    counters = next(ln for ln in out.splitlines() if "counters:" in ln)
    assert re.search(r"dropped data: 0 unauthentic, 0 replayed, 0 malformed", counters), counters
    # the server authenticated and decrypted every packet too
    # the server's own key set-up lines, logged when it installs the keys (with the push)
    log = server.log_text()
    assert "Authenticate/Decrypt packet error" not in log
    assert f"Outgoing Data Channel: Cipher '{opts.data_ciphers}' initialized" in log, log[-3000:]
    digest_bits = {"SHA1": 160, "SHA256": 256, "SHA512": 512}[opts.auth or "SHA1"]
    assert f"Outgoing Data Channel: Using {digest_bits} bit message hash '{opts.auth}'" in log


def test_cbc_with_mismatched_auth_digest_gets_no_reply(pki, netns, openvpn_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A profile whose `auth` differs from the server's: no echo comes back, because the
    server refuses every data packet of ours for its HMAC (asserted from the server's log)."""
    opts = ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-CBC", auth="SHA256")
    server = openvpn_server(opts)
    text = client_profile(pki, opts, server.remote_host).replace("auth SHA256", "auth SHA512")
    profile = tmp_path / "client.ovpn"
    profile.write_text(text)
    r = netns.client.run(
        [sys.executable, "-m", "trivpn", "ping", str(profile), server.tunnel_v4, "-c", "2", "-i", "0.2", "-W", "1"],
        check=False,
        timeout=90,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "2 packets transmitted, 0 received" in r.stdout, out
    assert "Traceback" not in out
    # The cause, not just the silence: our echo requests left as data packets, and the
    # server refused each of them for its HMAC (it logs one line per refused packet).
    counters = next(ln for ln in out.splitlines() if "counters:" in ln)
    m = re.search(r"data in 0 out (\d+) packets", counters)
    assert m and int(m.group(1)) >= 2, counters
    log = wait_for_text(server.log_path, HMAC_REFUSED, 10, count=int(m.group(1)))
    assert "Incoming Data Channel: Using 256 bit message hash 'SHA256'" in log
