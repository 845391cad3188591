"""workers: the root nursery, graceful stop, signals and cleanups."""

from trivpn.workers.driver import CoreTimer, Outbox
from trivpn.workers.manager import ServiceFailed, WorkersManager, primary_error

__all__ = ["CoreTimer", "Outbox", "ServiceFailed", "WorkersManager", "primary_error"]
