"""Status reports in OpenVPN 2.6's layouts: a frozen model, pure formatters, a rewrite clock.

Nothing here reads the clock or does IO except `write_status_file`; `serve` and `connect`
build a snapshot from their cores and hand it in.
"""

from trivpn.status.format import (
    StatusVersion,
    escape_field,
    format_client_status,
    format_server_status,
)
from trivpn.status.model import (
    ClientEntry,
    ClientStatus,
    CompressionStats,
    RealAddress,
    RouteEntry,
    ServerStatus,
    StatusModelError,
)
from trivpn.status.writer import StatusWriter, write_status_file

__all__ = [
    "ClientEntry",
    "ClientStatus",
    "CompressionStats",
    "RealAddress",
    "RouteEntry",
    "ServerStatus",
    "StatusModelError",
    "StatusVersion",
    "StatusWriter",
    "escape_field",
    "format_client_status",
    "format_server_status",
    "write_status_file",
]
