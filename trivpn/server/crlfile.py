"""The server's ``crl-verify FILE``, re-read when the file changes.

OpenVPN reads the CRL file again for each new connection, so an operator revokes a
certificate by replacing the file, without a restart. trivpn does the same, cheaply: each
new client session stats the file and reads it again only if its mtime or size changed.
The read is bounded (MAX_CRL_BYTES) and validated like at start (one PEM CRL signed by the
CA); a file that cannot be read or fails validation is logged (an error: certificates it
revokes are not refused yet) and the last good CRL stays in force, so a half-written file
never lets revoked clients back in. Such a file is tried again at each new client until it
loads: fixing its permissions changes neither its mtime nor its size. The read is a small
blocking file read in the accepting task, as in OpenVPN; sessions already running keep the
CRL they were verified against (a revoked client is refused at its next connection).
"""

from __future__ import annotations

import logging
import os

from trivpn.errors import ConfigError
from trivpn.tlssession.crl import MAX_CRL_BYTES, check_crl

__all__ = ["CRLFile"]

log = logging.getLogger("trivpn.server")

_Signature = tuple[int, int]  # (st_mtime_ns, st_size)


def _signature(path: str) -> _Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


class CRLFile:
    """The current CRL text of one file (the text read at start until the file changes)."""

    def __init__(self, path: str, text: str, ca_pem: str) -> None:
        check_crl(text, ca_pem)
        self.path = path
        self.text = text
        self._ca_pem = ca_pem
        self._seen = _signature(path)
        self._failed: _Signature | None = None  # the version that did not load (logged once)
        #: how often the file was taken up again (tests and logs)
        self.reloads = 0

    def current(self) -> str:
        """The CRL to verify a new client against; re-reads the file if it changed."""
        sig = _signature(self.path)
        if sig is None or sig == self._seen:
            if sig is None and self._seen is not None:
                log.error("crl-verify: cannot stat %s; keeping the last CRL read", self.path)
                self._seen = None
            return self.text
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_CRL_BYTES + 1)
            text = data.decode("ascii")
            check_crl(text, self._ca_pem)
        except (OSError, UnicodeError, ConfigError) as exc:
            if sig != self._failed:
                self._failed = sig
                log.error("crl-verify: cannot use %s (%s); keeping the last CRL read", self.path, exc)
            return self.text
        self._seen, self._failed = sig, None
        self.text = text
        self.reloads += 1
        log.info("crl-verify: re-read %s", self.path)
        return text
