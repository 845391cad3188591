"""Our management service driven by code nobody here wrote: PyPI `openvpn-management-api`.

Quirks of that client (0.4.0) the script works around, as it must against openvpn too:
- it strips reply lines and joins them with nothing, so `state` with eight fields reads as
  `…,,END` and its parser fails on `END` as a port: the state here carries all nine fields;
- notifications other than `>CLIENT:` land in its reply queue, so bytecount stays off long
  enough for no `>BYTECOUNT:` to interleave (interval 3600 s);
- after `quit` its reader thread sees EOF and reconnects, then blocks on its own queue:
  the script ends with `send_sigterm()` / `disconnect(_quit=False)`, never `quit`.
Every blocking call runs in a worker thread abandoned on timeout, so a hang fails the test.
"""

from __future__ import annotations

import threading
from typing import Any

import trio
from helpers.require import require_module

from trivpn.management import commands as c
from trivpn.management import formats as f
from trivpn.management.core import Notification
from trivpn.management.service import ManagementService

require_module("openvpn_management_api")  # the `test` extra; CI=true fails rather than skips
from openvpn_management_api.events.client import ClientEvent  # noqa: E402
from openvpn_management_api.vpn import VPN  # noqa: E402

CONNECTED = f.StateRecord(
    1795323274, "CONNECTED", "SUCCESS", "10.8.0.2", "10.99.1.1", "1194", "10.99.1.2", "40000",
    "fd00:8::1000",
)


def drive(port: int, broadcast: Any) -> dict[str, Any]:
    """The client-side script (blocking, in a worker thread)."""
    vpn = VPN("127.0.0.1", port)
    got: list[Any] = []
    arrived = threading.Event()

    def on_event(event: Any) -> None:
        got.append(event)
        arrived.set()

    vpn.register_callback(ClientEvent, on_event)
    vpn.connect()
    result: dict[str, Any] = {"version": vpn.version, "state": vpn.get_state()}
    result["stats"] = vpn.get_stats()
    result["bytecount"] = vpn.send_command("bytecount 3600")
    result["bytecount_off"] = vpn.send_command("bytecount 0")
    result["signal"] = vpn.send_command("signal SIGUSR1")
    result["status"] = vpn.send_command("status 2")
    result["bogus"] = vpn.send_command("bogus")
    trio.from_thread.run_sync(broadcast)
    result["event_arrived"] = arrived.wait(5)
    result["events"] = got
    vpn.send_sigterm()
    return result


async def test_openvpn_management_api_drives_the_service(server_host: Any) -> None:
    server_host.states = [CONNECTED]
    server_host.status = [
        "TITLE,OpenVPN 2.6.14 trivpn-test",
        "TIME,2026-11-22 04:55:54,1795323354",
        "GLOBAL_STATS,Max bcast/mcast queue length,0",
    ]
    service = ManagementService(server_host)
    connect = f.client_event("CONNECT", [1, 0], [("common_name", "client1"), ("IV_SSO", "webauth")])

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(service.serve_tcp, 0)
            port = listeners[0].socket.getsockname()[1]
            result = await trio.to_thread.run_sync(
                drive, port, lambda: service.broadcast([Notification.always(*connect)]),
                abandon_on_cancel=True,
            )
            nursery.cancel_scope.cancel()

    assert result["version"] == "2.6.14"
    state = result["state"]
    assert state.state_name == "CONNECTED" and str(state.remote_addr) == "10.99.1.1"
    assert state.remote_port == 1194 and str(state.local_virtual_v4_addr) == "10.8.0.2"
    assert result["stats"].client_count == 0
    assert result["bytecount"] == "SUCCESS: bytecount interval changed"
    assert result["signal"] == "SUCCESS: signal SIGUSR1 thrown"
    assert result["status"].startswith("TITLE,OpenVPN 2.6.14") and result["status"].endswith("END")
    assert result["bogus"] == "ERROR: unknown command, enter 'help' for more options"
    assert result["event_arrived"]
    (event,) = result["events"]
    assert (event.type, event.client_id, event.key_id) == ("CONNECT", 1, 0)
    assert event.environment == {"common_name": "client1", "IV_SSO": "webauth"}
    assert c.Signal("SIGUSR1") in server_host.performed
    assert c.Signal("SIGTERM") in server_host.performed
