"""packetmuxer: control/data routing, the hard reset and the session ids."""

from trivpn.packetmuxer.core import MuxStats, PacketMuxer
from trivpn.packetmuxer.service import run_packetmuxer

__all__ = ["MuxStats", "PacketMuxer", "run_packetmuxer"]
