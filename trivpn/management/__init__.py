"""OpenVPN's management interface (protocol version 5): a sans-IO core and a trio service.

`core.ManagementConnection` speaks the protocol on one connection and asks a
`core.ManagementHost` (the daemon) for answers; `service.ManagementService` listens on TCP
or a unix socket and broadcasts real-time notifications.
"""

from trivpn.management.commands import Command, CommandError
from trivpn.management.core import (
    ByteCounts,
    ManagementConnection,
    ManagementHost,
    Notification,
    Reply,
)
from trivpn.management.formats import LogRecord, StateRecord

__all__ = [
    "ByteCounts",
    "Command",
    "CommandError",
    "LogRecord",
    "ManagementConnection",
    "ManagementHost",
    "Notification",
    "Reply",
    "StateRecord",
]
