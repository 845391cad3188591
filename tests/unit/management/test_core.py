"""The sans-IO management core, command by command, against bytes the real daemon sent.

Every `OBSERVED_*` sample below was captured in this session from Debian's openvpn
2.6.14-0+deb12u2 (`openvpn --client --dev null --remote 127.0.0.1 1 --management 127.0.0.1
PORT [pwfile] --management-hold …` on loopback, talked to with a Python socket); only the
pid, time stamps and version title differ where the fake host answers differently.
"""

from __future__ import annotations

from typing import Any

from trivpn.management import commands as c
from trivpn.management.core import ByteCounts, ManagementConnection, Notification
from trivpn.management.formats import StateRecord

OBSERVED_GREETING_HOLD = (
    b">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info\r\n"
    b">HOLD:Waiting for hold release:0\r\n"
)
OBSERVED_PROMPT = b"ENTER PASSWORD:"
OBSERVED_PASSWORD_OK = b"SUCCESS: password is correct\r\n"
OBSERVED_UNKNOWN = b"ERROR: unknown command, enter 'help' for more options\r\n"
OBSERVED_STATE = b"1796062765,CONNECTING,,,,,,\r\nEND\r\n"
OBSERVED_STATE_ON = b"SUCCESS: real-time state notification set to ON\r\n"
OBSERVED_STATE_ON_ALL = OBSERVED_STATE_ON + OBSERVED_STATE
OBSERVED_BYTECOUNT_SET = b"SUCCESS: bytecount interval changed\r\n"
OBSERVED_BYTECOUNT = b">BYTECOUNT:0,28\r\n"
OBSERVED_HOLD_QUERY = b"SUCCESS: hold=1\r\n"
OBSERVED_HOLD_RELEASE = b"SUCCESS: hold release succeeded\r\n"
OBSERVED_SIGNAL = b"SUCCESS: signal SIGUSR2 thrown\r\n"
OBSERVED_KILL_IN_CLIENT = (
    b"ERROR: The 'kill' command is not supported by the current daemon mode\r\n"
)
OBSERVED_CLIENT_AUTH_IN_CLIENT = (
    b"ERROR: The 'client-auth' command is not supported by the current daemon mode\r\n"
)
OBSERVED_USERNAME = b"SUCCESS: 'Auth' username entered, but not yet verified\r\n"
OBSERVED_PASSWORD = b"SUCCESS: 'Auth' password entered, but not yet verified\r\n"
OBSERVED_AUTH_RETRY_SET = b"SUCCESS: auth-retry parameter changed\r\n"
OBSERVED_AUTH_RETRY_QUERY = b"SUCCESS: auth-retry=interact\r\n"
OBSERVED_ECHO_ALL_EMPTY = b"END\r\n"
OBSERVED_LOG_OFF = b"SUCCESS: real-time log notification set to OFF\r\n"
OBSERVED_NO_CLOSING_QUOTE = b'ERROR: Options error: No closing quotation (") in TCP:0\r\n'


def talk(conn: ManagementConnection, data: bytes, now: float = 0.0) -> bytes:
    conn.receive_data(data, now)
    return conn.data_to_send()


def connected(host: Any) -> ManagementConnection:
    conn = ManagementConnection(host)
    conn.data_to_send()
    return conn


def test_greeting_with_hold(host: Any) -> None:
    host.holding = 0
    assert ManagementConnection(host).data_to_send() == OBSERVED_GREETING_HOLD


def test_password_prompt_retry_and_success(host: Any) -> None:
    host.holding = 0
    conn = ManagementConnection(host, password="sekrit")
    assert conn.data_to_send() == OBSERVED_PROMPT
    assert talk(conn, b"wrong\n") == OBSERVED_PROMPT  # no error text before authentication
    assert talk(conn, b"pid\n") == OBSERVED_PROMPT  # commands are password attempts too
    assert talk(conn, b"sekrit\r\n") == OBSERVED_PASSWORD_OK + OBSERVED_GREETING_HOLD
    assert talk(conn, b"pid\n") == b"SUCCESS: pid=4242\r\n"


def test_third_wrong_password_closes(host: Any) -> None:
    conn = ManagementConnection(host, password="sekrit")
    conn.data_to_send()
    talk(conn, b"a\nb\n")
    assert not conn.closed
    talk(conn, b"c\n")
    assert conn.closed
    assert not conn.authenticated


def test_version_and_pid(host: Any) -> None:
    conn = connected(host)
    assert talk(conn, b"version\n") == (
        b"OpenVPN Version: OpenVPN 2.6.14 trivpn-test\r\nManagement Version: 5\r\nEND\r\n"
    )
    assert talk(conn, b"pid\n") == b"SUCCESS: pid=4242\r\n"
    assert talk(conn, b"version 3\n") == b""  # observed: no reply
    # observed in client mode: b'SUCCESS: nclients=0,bytesin=0,bytesout=0\r\n'
    assert talk(conn, b"load-stats\n") == b"SUCCESS: nclients=0,bytesin=0,bytesout=0\r\n"


def test_help_is_a_block_ending_in_end(host: Any) -> None:
    out = talk(connected(host), b"help\n")
    assert out.endswith(b"\r\nEND\r\n")
    assert b"client-auth CID KID" in out and b"\n\n" not in out


def test_state_commands_and_realtime(host: Any) -> None:
    conn = connected(host)
    assert talk(conn, b"state\n") == OBSERVED_STATE
    assert talk(conn, b"state all\n") == OBSERVED_STATE
    assert talk(conn, b"state 2\n") == OBSERVED_STATE
    assert talk(conn, b"state on all\n") == OBSERVED_STATE_ON_ALL
    conn.notify(Notification.state(StateRecord(1796062830, "WAIT")))
    assert conn.data_to_send() == b">STATE:1796062830,WAIT,,,,,,\r\n"  # observed
    assert talk(conn, b"state off\n") == b"SUCCESS: real-time state notification set to OFF\r\n"
    conn.notify(Notification.state(StateRecord(1796062834, "EXITING", "SIGTERM")))
    assert conn.data_to_send() == b""


def test_log_history_and_flags(host: Any) -> None:
    conn = connected(host)
    assert talk(conn, b"log all\n") == b"1796062765,I,first\r\n1796062766,,second\r\nEND\r\n"
    assert talk(conn, b"log 1\n") == b"1796062766,,second\r\nEND\r\n"
    assert talk(conn, b"log 0\n") == b"END\r\n"
    assert talk(conn, b"log on\n") == b"SUCCESS: real-time log notification set to ON\r\n"
    assert talk(conn, b"log off\n") == OBSERVED_LOG_OFF
    assert talk(conn, b"echo all\n") == OBSERVED_ECHO_ALL_EMPTY
    assert talk(conn, b"echo on\n") == b"SUCCESS: real-time echo notification set to ON\r\n"


def test_bytecount_timer(host: Any) -> None:
    conn = connected(host)
    assert conn.get_timer() is None
    assert talk(conn, b"bytecount 1\n", now=100.0) == OBSERVED_BYTECOUNT_SET
    assert conn.get_timer() == 101.0
    conn.handle_timer(100.5)
    assert conn.data_to_send() == b""
    conn.handle_timer(101.0)
    assert conn.data_to_send() == OBSERVED_BYTECOUNT
    assert conn.get_timer() == 102.0
    conn.handle_timer(150.0)  # a late timer does not burst
    assert conn.data_to_send() == OBSERVED_BYTECOUNT and conn.get_timer() == 150.0
    assert talk(conn, b"bytecount 0\n") == OBSERVED_BYTECOUNT_SET
    assert conn.get_timer() is None


def test_bytecount_cli_on_a_server(server_host: Any) -> None:
    server_host.counts = ByteCounts(10, 20, [(1, 5, 6), (2, 7, 8)])
    conn = connected(server_host)
    talk(conn, b"bytecount 5\n", now=0.0)
    conn.handle_timer(5.0)
    assert conn.data_to_send() == b">BYTECOUNT_CLI:1,5,6\r\n>BYTECOUNT_CLI:2,7,8\r\n"


def test_hold_commands(host: Any) -> None:
    host.holding, host.hold_flag = 0, True
    conn = connected(host)
    assert talk(conn, b"hold\n") == OBSERVED_HOLD_QUERY
    assert talk(conn, b"hold off\n") == b"SUCCESS: hold flag set to OFF\r\n"
    assert talk(conn, b"hold on\n") == b"SUCCESS: hold flag set to ON\r\n"
    assert talk(conn, b"hold release\n") == OBSERVED_HOLD_RELEASE
    assert host.performed[-1] == c.Hold("release")


def test_signal_credentials_and_auth_retry(host: Any) -> None:
    conn = connected(host)
    assert talk(conn, b"signal SIGUSR2\n") == OBSERVED_SIGNAL
    assert talk(conn, b'username Auth "a b\\\\c"\n') == OBSERVED_USERNAME
    assert talk(conn, b'password Auth "x\\"y"\n') == OBSERVED_PASSWORD
    assert host.performed[-2:] == [c.Username("Auth", "a b\\c"), c.Password("Auth", 'x"y')]
    assert talk(conn, b"auth-retry interact\n") == OBSERVED_AUTH_RETRY_SET
    assert talk(conn, b"auth-retry\n") == OBSERVED_AUTH_RETRY_QUERY


def test_status_in_both_modes(host: Any) -> None:
    conn = connected(host)
    assert talk(conn, b"status\n") == b"OpenVPN STATISTICS\r\nTCP/UDP write bytes,28\r\nEND\r\n"
    host.status = None  # observed while holding: status is refused, the session goes on
    assert talk(conn, b"status 2\n") == (
        b"ERROR: The 'status' command is not supported by the current daemon mode\r\n"
    )


def test_server_commands_in_client_mode(host: Any) -> None:
    conn = connected(host)
    assert talk(conn, b"kill x\n") == OBSERVED_KILL_IN_CLIENT
    # observed: client-auth reads its block up to END before refusing
    assert talk(conn, b"client-auth 1 2\n") == b""
    assert talk(conn, b'push "x"\n') == b""
    assert talk(conn, b"END\n") == OBSERVED_CLIENT_AUTH_IN_CLIENT
    assert talk(conn, b"client-auth-nt 1 2\n") == OBSERVED_CLIENT_AUTH_IN_CLIENT
    assert host.performed == []


def test_server_commands(server_host: Any) -> None:
    conn = connected(server_host)
    assert talk(conn, b"client-auth 1 2\r\n") == b""
    assert talk(conn, b'push "route 10.0.0.0 255.0.0.0"\r\nifconfig-push 10.8.0.9 255.255.255.0\r\n') == b""
    assert talk(conn, b"END\r\n") == b"SUCCESS: client-auth command succeeded\r\n"
    assert server_host.performed[-1] == c.ClientAuth(
        1, 2, ('push "route 10.0.0.0 255.0.0.0"', "ifconfig-push 10.8.0.9 255.255.255.0")
    )
    assert talk(conn, b"client-auth-nt 3 0\n") == b"SUCCESS: client-auth command succeeded\r\n"
    assert talk(conn, b'client-deny 3 0 "bad" "go away"\n') == (
        b"SUCCESS: client-deny command succeeded\r\n"
    )
    assert talk(conn, b"client-kill 4 HALT\n") == b"SUCCESS: client-kill command succeeded\r\n"
    assert talk(conn, b"kill nobody\n") == b"ERROR: common name 'nobody' not found\r\n"
    assert talk(conn, b"load-stats\n") == b"SUCCESS: nclients=0,bytesin=0,bytesout=0\r\n"


def test_malformed_lines_get_errors_and_the_session_goes_on(host: Any) -> None:
    conn = connected(host)
    assert talk(conn, b"bogus\n") == OBSERVED_UNKNOWN
    assert talk(conn, b'username Auth "unterminated\n') == OBSERVED_NO_CLOSING_QUOTE
    assert talk(conn, b"\xff\xfe\x00garbage\n") == OBSERVED_UNKNOWN
    assert talk(conn, b"\n\r\n#comment\n") == b""  # observed: an empty line gets no reply
    assert talk(conn, b"pid\n") == b"SUCCESS: pid=4242\r\n"
    assert not conn.closed


def test_split_and_joined_input(host: Any) -> None:
    conn = connected(host)
    assert talk(conn, b"pi") == b""
    assert talk(conn, b"d\npid\r\nhold") == b"SUCCESS: pid=4242\r\n" * 2
    assert talk(conn, b"\n") == b"SUCCESS: hold=0\r\n"


def test_quit_and_exit_close(host: Any) -> None:
    for word in (b"quit", b"exit"):
        conn = connected(host)
        commands = conn.receive_data(word + b"\npid\n", 0.0)
        assert commands == [c.Quit()]
        assert conn.closed and conn.data_to_send() == b""


def test_receive_data_returns_the_accepted_commands(host: Any) -> None:
    conn = connected(host)
    assert conn.receive_data(b"pid\nbogus\nsignal SIGHUP\n", 0.0) == [c.Pid(), c.Signal("SIGHUP")]
