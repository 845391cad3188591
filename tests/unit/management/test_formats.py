"""Real-time notification lines in OpenVPN's formats.

Samples marked "observed" were captured from Debian's openvpn 2.6.14 in this session (see
test_core.py); the `>CLIENT:` and `>PASSWORD:` shapes come from the server-mode lab in
shared/reference/openvpn-server.md §2.3 (also observed on 2.6.14).
"""

from __future__ import annotations

from typing import Any

from trivpn.management import formats as f
from trivpn.management.core import ManagementConnection, Notification


def test_state_lines() -> None:
    # observed: >STATE:1796062830,WAIT,,,,,, and >STATE:1796062834,EXITING,SIGTERM,,,,,
    assert f.state_notification(f.StateRecord(1796062830, "WAIT")) == (
        ">STATE:1796062830,WAIT,,,,,,"
    )
    assert f.state_notification(f.StateRecord(1796062834, "EXITING", "SIGTERM")) == (
        ">STATE:1796062834,EXITING,SIGTERM,,,,,"
    )
    # reference §2.2: a client's CONNECTED line, with the tun IPv6 address as ninth field
    record = f.StateRecord(
        1795323274, "CONNECTED", "SUCCESS", "10.8.0.2", "10.99.1.1", "1194", "", "",
        "fd00:8::1000",
    )
    assert record.line() == "1795323274,CONNECTED,SUCCESS,10.8.0.2,10.99.1.1,1194,,,fd00:8::1000"


def test_log_echo_bytecount_hold_password_fatal() -> None:
    # observed: >LOG:1796062781,D,MANAGEMENT: CMD '' and empty flags as in ",,text"
    assert f.log_notification(f.LogRecord(1796062781, "D", "MANAGEMENT: CMD ''")) == (
        ">LOG:1796062781,D,MANAGEMENT: CMD ''"
    )
    assert f.log_notification(f.LogRecord(1795323382, "", "TCP/UDP: Closing socket")) == (
        ">LOG:1795323382,,TCP/UDP: Closing socket"
    )
    assert f.echo_notification(f.LogRecord(5, "", "hello")) == ">ECHO:5,hello"
    assert f.bytecount(0, 28) == ">BYTECOUNT:0,28"  # observed
    assert f.bytecount_cli(3, 10, 20) == ">BYTECOUNT_CLI:3,10,20"
    assert f.hold(0) == ">HOLD:Waiting for hold release:0"  # observed
    # observed after `hold release` with --management-query-passwords
    assert f.password_needed() == ">PASSWORD:Need 'Auth' username/password"
    assert f.password_failed() == ">PASSWORD:Verification Failed: 'Auth'"
    # observed: >FATAL:Cannot load CA certificate file /dev/null (no entries were read)
    assert f.fatal("Cannot load CA certificate file /dev/null (no entries were read)") == (
        ">FATAL:Cannot load CA certificate file /dev/null (no entries were read)"
    )


def test_client_events() -> None:
    assert f.client_event("CONNECT", [1, 0], [("common_name", "client1"), ("n_clients", "0")]) == [
        ">CLIENT:CONNECT,1,0",
        ">CLIENT:ENV,common_name=client1",
        ">CLIENT:ENV,n_clients=0",
        ">CLIENT:ENV,END",
    ]
    assert f.client_event("ADDRESS", [1, "10.8.0.2", 1], None) == [">CLIENT:ADDRESS,1,10.8.0.2,1"]
    assert f.client_event("ESTABLISHED", [1], [])[-1] == ">CLIENT:ENV,END"
    assert f.client_event("DISCONNECT", [2], [("bytes_sent", "9")])[0] == ">CLIENT:DISCONNECT,2"


def test_text_cannot_inject_protocol_lines(host: Any) -> None:
    conn = ManagementConnection(host)
    conn.data_to_send()
    conn.receive_data(b"log on\n", 0.0)
    conn.data_to_send()
    conn.notify(Notification.log(f.LogRecord(1, "I", "evil\r\nEND\r\n>HOLD:x")))
    assert conn.data_to_send() == b">LOG:1,I,evil  END  >HOLD:x\r\n"


def test_client_env_notification_repr_hides_values() -> None:
    lines = f.client_event("CONNECT", [1, 0], [("password", "hunter2")])
    notification = Notification.always(*lines)
    assert "hunter2" not in repr(notification)


def test_always_notifications_reach_every_authenticated_connection(host: Any) -> None:
    conn = ManagementConnection(host, password="pw")
    conn.data_to_send()
    conn.notify(Notification.always(f.password_needed()))
    assert conn.data_to_send() == b""  # nothing before the password
    conn.receive_data(b"pw\n", 0.0)
    conn.data_to_send()
    conn.notify(Notification.always(f.password_needed()))
    assert conn.data_to_send() == b">PASSWORD:Need 'Auth' username/password\r\n"


def test_client_chosen_peer_info_values_reach_management_without_control_bytes() -> None:
    """IV_* values are the client's: OpenVPN 2.6's `validate_peer_info_line` makes every
    whitespace, control or non-ASCII byte and $ ( and backquote a `_`, leaves out a line
    whose name is not [A-Za-z0-9_], and reads at most 255 bytes of a line. Before, an ESC sequence or a
    NUL went to the management client as sent."""
    from types import SimpleNamespace
    from typing import cast

    from trivpn.observe.server import ServerMonitor

    info = {
        "IV_GUI_VER": "x\x1b[2J\x00\x07y\x7f",
        "IV_PLAT_VER": "10.0 x64$(id)`z` é",
        "IV_BAD-NAME": "v",
        "IV_LONG": "z" * 300,
        "OTHER": "kept out",
    }
    env = dict(f.peer_info_env(info))
    assert env == {
        "IV_GUI_VER": "x_[2J__y_",
        "IV_PLAT_VER": "10.0_x64__id)_z____",
        "IV_LONG": "z" * (255 - len("IV_LONG=")),
    }
    client = SimpleNamespace(addr=("192.0.2.1", 1194), common_name="c", peer_chain=())
    lines = f.client_event("CONNECT", [0, 1], ServerMonitor._client_env(cast(Any, None), client, "CN=c", info, ""))
    assert ">CLIENT:ENV,IV_GUI_VER=x_[2J__y_" in lines
    assert all(ch >= " " and ch != "\x7f" for line in lines for ch in line)
