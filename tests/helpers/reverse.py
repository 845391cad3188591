"""Helpers for the reverse-tunnel tests that run a relay and expose in-process on loopback."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"


def free_port() -> int:
    """A port the kernel says is free now (the start of a relay's public range)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return min(port, 65535 - 50)
