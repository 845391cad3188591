"""What the client run tells an observer (management, status file, metrics); no imports
beyond typing so that a plain `trivpn connect` pays nothing for it."""

from __future__ import annotations

from typing import Any, Protocol


class ClientObserver(Protocol):
    """Called by `trivpn.client.Client` at the points OpenVPN reports a state change."""

    async def hold(self, delay: float) -> None:
        """Before an attempt (`delay`: the backoff about to be waited): return at once, or
        wait for `hold release` when the management hold flag is set."""
        ...

    def state(self, name: str, description: str = "") -> None:
        """A state of OpenVPN's list (CONNECTING, WAIT, ASSIGN_IP, CONNECTED, RECONNECTING, ...)."""
        ...

    def session_open(self, session: Any) -> None:
        """A session's stack was built (`trivpn.session.clientstack.ClientSession`)."""
        ...

    def session_up(self, session: Any, info: Any) -> None:
        """The tunnel is up on `session`; `info` is its `TunnelInfo`."""
        ...

    def session_closed(self, session: Any, reason: str) -> None:
        """`session` ended (`reason`: why, empty when cancelled)."""
        ...

    async def auth_failed(self, client: Any, reason: str) -> bool:
        """The server refused our credentials: True to try again (`auth-retry`), after
        perhaps giving `client` new ones (`client.config`); False ends the run."""
        ...


class ServerObserver(Protocol):
    """Called by `trivpn serve`'s client sessions (management-client-auth, metrics)."""

    async def authorize(self, client: Any, request: Any) -> tuple[str | None, str]:
        """After the script (if any) accepted `request` (an AuthRequest): (None, "") admits,
        else (reason to log, reason for AUTH_FAILED). May set `client.ccd_extra`."""
        ...

    def client_ready(self, client: Any) -> None:
        """The client's first key is in and its push is ready."""
        ...

    def client_gone(self, client: Any) -> None:
        """The client's session ended, however."""
        ...
