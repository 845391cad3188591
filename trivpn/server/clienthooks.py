"""One client's scripts: client-connect, learn-address and client-disconnect, with the
client's environment (scripts.py) kept from admission to the end of the session.

The session (clientsession.py) decides *when* (admission.py has the order); this runs the
script, with the daemon's and the client's variables plus the call's own, and turns a
client-connect answer into a refusal (NegotiationError) or the options of its file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

from trivpn.errors import ConfigError
from trivpn.server.admission import ServerScripts, connect_file, dynamic_entry
from trivpn.server.ccd import CcdEntry
from trivpn.server.routing import LearnAddress
from trivpn.server.scripts import SCRIPT_SECONDS, run_script
from trivpn.tlssession.negotiation import NegotiationError

__all__ = ["ClientHooks"]

log = logging.getLogger("trivpn.server")


class ClientHooks:
    """The scripts of one client and the environment they share."""

    def __init__(self, scripts: ServerScripts) -> None:
        self.scripts = scripts
        self.config = scripts.config
        #: the client's variables once it is established (client_env)
        self.env: dict[str, str] = {}
        #: learn-address deletes owed (the routes are already forgotten)
        self.deletes: list[LearnAddress] = []

    def _env(self, script_type: str, **extra: str) -> dict[str, str]:
        return {**self.scripts.daemon, **self.env, "script_type": script_type, **extra}

    async def client_connect(self, seconds: float) -> CcdEntry | None:
        """Run client-connect with its dynamic-config file: the file's options, or
        NegotiationError (non-zero exit, a file that does not parse)."""
        command = self.config.client_connect
        if command is None:
            return None
        path = connect_file(self.config.tmp_dir)
        try:
            env = self._env("client-connect", client_connect_config_file=path)
            status = await run_script(command, [path], env, seconds)
            if status != 0:
                raise NegotiationError(f"the client-connect script refused the client (status {status})")
            try:
                return dynamic_entry(path)
            except ConfigError as exc:
                raise NegotiationError(f"the client-connect file was rejected: {exc}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def learn_address(self, ev: LearnAddress) -> None:
        """`learn-address add|update|delete ADDR [CN]`; a failure is only logged."""
        command = self.config.learn_address
        if command is None:
            return
        args = [ev.op, ev.address] + ([ev.common_name] if ev.common_name is not None else [])
        # a delete gets no client variables (as from OpenVPN, whose client is gone by then)
        env = {"script_type": "learn-address"} if ev.op == "delete" else self._env("learn-address")
        status = await run_script(command, args, env)
        if status != 0:
            log.warning("learn-address %s %s: the script failed (status %s)", ev.op, ev.address, status)

    async def finish(self, admitted: bool, received: int, sent: int, connected: float) -> None:
        """client-disconnect (for an admitted client), then the owed learn-address deletes."""
        command = self.config.client_disconnect
        if admitted and command is not None:
            env = self._env("client-disconnect", bytes_received=str(received), bytes_sent=str(sent),
                            time_duration=str(int(time.time() - connected)))
            await run_script(command, [], env, SCRIPT_SECONDS)
        deletes, self.deletes = self.deletes, []
        for ev in deletes:
            await self.learn_address(ev)
