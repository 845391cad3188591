"""The server's ``crl-verify FILE``, re-read when the file changes; fails closed.

OpenVPN reads the CRL file again whenever it verifies a client certificate, at a new
connection and at each renegotiation (every new key is a full TLS handshake), so an operator
revokes a certificate by replacing the file, without a restart, and a client already
connected is refused at its next renegotiation. trivpn does the same, cheaply: each new
client session and each renegotiation stats the file and reads it again only if its mtime
or size changed. A client refused at renegotiation loses its session (keyschedule.py); with
OpenVPN it keeps its old key until its own hand-window runs out, then reconnects and is
refused. The read is bounded (MAX_CRL_BYTES) and validated like at start (one
PEM CRL signed by the CA).

A file that is missing, cannot be read (wrong permissions after the privileges were
dropped, say) or is not a valid CRL fails closed, as in OpenVPN (which throws its old CRL
away before loading the file, so an unreadable file leaves it with none and every client
certificate fails): new clients are refused, and so are connected clients when they
renegotiate, with an error line naming the file and the problem (at once when the problem
changes, then at most every LOG_EVERY seconds, with the number refused meanwhile). Keeping
the last good CRL instead would let in a client revoked by the very file that cannot be
read. While failing, the file is tried again at each check, since fixing its permissions
changes neither its mtime nor its size; the first client after the fix is admitted, and a
line says so. (One difference: when the file cannot even be stat()ed, OpenVPN keeps its
CRL; trivpn refuses then too.)

A file caught half-written (an editor or `cp` writing in place) fails to parse and refuses
the clients that come or renegotiate meanwhile: a transient refusal (a client refused at
renegotiation loses its session and connects again), and the safe side. Writing the new
file next to it and renaming it over the old one avoids even that.

The read is a small blocking file read in the accepting task (or the client's task at a
renegotiation), as in OpenVPN. Between renegotiations a connected client is not checked
again: revoking it takes effect at its next renegotiation (reneg-sec, 3600 s by default) or
its next connection, whichever comes first, as in OpenVPN.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from trivpn.errors import ConfigError
from trivpn.tlssession.crl import MAX_CRL_BYTES, UNUSABLE_CRL, check_crl

__all__ = ["LOG_EVERY", "CRLFile"]

log = logging.getLogger("trivpn.server")

#: While the file cannot be used, the same problem is logged at most this often (seconds).
LOG_EVERY = 60.0

_Signature = tuple[int, int]  # (st_mtime_ns, st_size)


def _signature(path: str) -> _Signature:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size)


def _problem(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    if isinstance(exc, UnicodeError):
        return "not a PEM text file"
    return str(exc)


class CRLFile:
    """The CRL of one file for new clients and renegotiations (see the module docstring):
    the text read at start until the file changes, `UNUSABLE_CRL` while the file cannot be
    used."""

    def __init__(self, path: str, text: str, ca_pem: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        check_crl(text, ca_pem)
        self.path = path
        self.text = text
        self._ca_pem = ca_pem
        self._clock = clock
        try:
            self._seen: _Signature | None = _signature(path)
        except OSError:
            self._seen = None  # read a moment ago: current() tries again
        #: why the file cannot be used now (clients are refused), else None
        self.problem: str | None = None
        self._logged_at = 0.0
        self._refused = 0  # certificate checks refused since the last line
        #: how often the file was taken up again (tests and logs)
        self.reloads = 0

    def current(self) -> str:
        """The CRL to verify a client certificate against now (a new client, a
        renegotiation); re-reads the file if it changed, or if it could not be used last time. `UNUSABLE_CRL` (every certificate refused) while the
        file cannot be used."""
        try:
            sig = _signature(self.path)
            if sig == self._seen and self.problem is None:
                return self.text
            with open(self.path, "rb") as f:
                data = f.read(MAX_CRL_BYTES + 1)
            text = data.decode("ascii")
            check_crl(text, self._ca_pem)  # also refuses a file larger than MAX_CRL_BYTES
        except (OSError, UnicodeError, ConfigError) as exc:
            self._refuse(_problem(exc))
            return UNUSABLE_CRL
        if self.problem is not None:
            log.warning("crl-verify: %s loads again; clients are admitted again", self.path)
        else:
            log.info("crl-verify: re-read %s", self.path)
        self._seen, self.problem, self.text = sig, None, text
        self.reloads += 1
        return text

    def _refuse(self, problem: str) -> None:
        """One client refused (new, or renegotiating): an error line when the problem is new, else at most
        every LOG_EVERY seconds (a flood of clients must not flood the log)."""
        now = self._clock()
        self._refused += 1
        if problem != self.problem:
            log.error("crl-verify: cannot use %s (%s): clients are refused (new ones, connected ones when they"
                      " renegotiate) until it loads", self.path, problem)
        elif now - self._logged_at >= LOG_EVERY:
            log.error("crl-verify: still cannot use %s (%s): %d clients refused in the last %.0f s",
                      self.path, problem, self._refused, now - self._logged_at)
        else:
            return
        self._logged_at, self._refused, self.problem = now, 0, problem
