"""networkio: UDP/TCP transports that move batches of OpenVPN packets."""

from trivpn.networkio.framing import TCPFramer, frame_packets
from trivpn.networkio.service import run_networkio
from trivpn.networkio.transport import (
    Endpoint,
    TCPTransport,
    Transport,
    TransportError,
    UDPTransport,
    open_transport,
    resolve,
)

__all__ = [
    "Endpoint",
    "TCPFramer",
    "TCPTransport",
    "Transport",
    "TransportError",
    "UDPTransport",
    "frame_packets",
    "open_transport",
    "resolve",
    "run_networkio",
]
