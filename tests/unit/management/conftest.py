"""A fake daemon for the management tests (the `host` fixture)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from trivpn.management import commands as c
from trivpn.management.core import ByteCounts, Reply
from trivpn.management.formats import LogRecord, StateRecord


class FakeHost:
    """Records what the core asked it to do and answers like a client-mode daemon."""

    def __init__(self, *, server: bool = False, holding: int | None = None) -> None:
        self.server = server
        self.holding = holding
        self.hold_flag = holding is not None
        self.performed: list[c.Command] = []
        self.states = [StateRecord(1796062765, "CONNECTING")]
        self.logs = [LogRecord(1796062765, "I", "first"), LogRecord(1796062766, "", "second")]
        self.counts = ByteCounts(0, 28)
        self.status: list[str] | None = ["OpenVPN STATISTICS", "TCP/UDP write bytes,28"]

    @property
    def is_server(self) -> bool:
        return self.server

    def version_title(self) -> str:
        return "OpenVPN 2.6.14 trivpn-test"

    def pid(self) -> int:
        return 4242

    def state_history(self) -> Sequence[StateRecord]:
        return self.states

    def log_history(self) -> Sequence[LogRecord]:
        return self.logs

    def echo_history(self) -> Sequence[LogRecord]:
        return []

    def status_lines(self, version: int | None) -> Sequence[str] | None:
        return self.status

    def bytecounts(self) -> ByteCounts:
        return self.counts

    def figures_json(self) -> str:
        return '{"role": "test"}'

    def pending_queries(self) -> Sequence[str]:
        return []

    def hold_waiting(self) -> int | None:
        return self.holding

    def perform(self, command: c.Command) -> Reply | None:
        self.performed.append(command)
        match command:
            case c.Hold("query"):
                return Reply.success(f"hold={int(self.hold_flag)}")
            case c.Hold("release"):
                self.holding = None
            case c.Username() | c.Password() if not self.server:
                return None
            case c.AuthRetry(None):
                return Reply.success("auth-retry=interact")
            case c.Kill(common_name=cn) if cn is not None:
                return Reply.error(f"common name '{cn}' not found")
            case c.LoadStats():
                return Reply.success("nclients=0,bytesin=0,bytesout=0")
        return None


@pytest.fixture
def host() -> FakeHost:
    return FakeHost()


@pytest.fixture
def server_host() -> FakeHost:
    return FakeHost(server=True)


@pytest.fixture
def make_host() -> type[FakeHost]:
    """The class itself, for tests that need a fresh host per example (hypothesis)."""
    return FakeHost
