"""A hostile management client cannot grow the core's memory.

Figures: a line is at most MAX_LINE_BYTES (2048); buffered input stays below MAX_INPUT_BYTES
(8192) when the caller respects `wants_data`; pending output stops command processing at
OUTPUT_HIGH_WATER (64 KiB) plus one reply; a client-auth block keeps at most 256 lines /
32 KiB.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trivpn.management import commands as c
from trivpn.management import core


def connected(host: Any) -> core.ManagementConnection:
    conn = core.ManagementConnection(host)
    conn.data_to_send()
    return conn


def test_overlong_line_is_discarded_with_one_error(host: Any) -> None:
    conn = connected(host)
    for _ in range(100):  # 1 MiB without a newline, in 10 KiB-ish pieces
        conn.receive_data(b"x" * (core.MAX_LINE_BYTES - 1), 0.0)
        assert len(conn._inbuf) <= core.MAX_LINE_BYTES
    conn.receive_data(b"tail\npid\n", 0.0)
    assert conn.data_to_send() == (
        b"ERROR: command line too long (2048 bytes max)\r\nSUCCESS: pid=4242\r\n"
    )


def test_overlong_line_arriving_whole(host: Any) -> None:
    conn = connected(host)
    conn.receive_data(b"y" * (core.MAX_LINE_BYTES + 1) + b"\n", 0.0)
    assert conn.data_to_send().startswith(b"ERROR: command line too long")
    assert conn.receive_data(b"pid\n", 0.0) == [c.Pid()]


def test_feeding_beyond_the_input_limit_is_a_caller_error(host: Any) -> None:
    conn = connected(host)
    with pytest.raises(ValueError, match="wants_data"):
        conn.receive_data(b"p" * (core.MAX_INPUT_BYTES + 1), 0.0)


def test_output_high_water_pauses_processing(host: Any) -> None:
    conn = connected(host)
    flood = b"help\n" * 400  # 2000 bytes of input, about 1 MiB of replies
    conn.receive_data(flood, 0.0)
    assert not conn.wants_data
    first = conn.data_to_send()
    assert core.OUTPUT_HIGH_WATER <= len(first) < core.OUTPUT_HIGH_WATER + 4096
    replies = [first]
    for _ in range(1000):  # the service's loop: drain, then resume until it wants data
        if conn.wants_data:
            break
        conn.receive_data(b"", 0.0)
        replies.append(conn.data_to_send())
        assert len(replies[-1]) < core.OUTPUT_HIGH_WATER + 4096
    assert conn.wants_data
    assert b"".join(replies).count(b"\r\nEND\r\n") == 400  # every help answered, in bounded pieces


def test_client_auth_block_is_bounded(server_host: Any) -> None:
    conn = connected(server_host)
    conn.receive_data(b"client-auth 1 2\n", 0.0)
    for _ in range(1000):
        conn.receive_data(b"push 'route 10.0.0.0 255.0.0.0'\n", 0.0)
    assert len(conn._block_lines) == core.MAX_BLOCK_LINES
    assert conn.receive_data(b"END\n", 0.0) == []
    assert conn.data_to_send() == b"ERROR: client-auth block too long (256 lines, 32768 bytes max)\r\n"
    assert server_host.performed == []
    assert conn.receive_data(b"pid\n", 0.0) == [c.Pid()]


def test_wrong_passwords_stop_at_three(host: Any) -> None:
    conn = core.ManagementConnection(host, password="pw")
    conn.data_to_send()
    conn.receive_data(b"1\n2\n3\n4\n5\n", 0.0)
    assert conn.closed
    assert conn.data_to_send() == b"ENTER PASSWORD:" * 2


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    chunks=st.lists(
        st.one_of(
            st.binary(max_size=300),
            st.sampled_from([b"\n", b"\r\n", b'"', b"'", b"\\", b"END\n", b"client-auth 1 2\n",
                             b"state on all\n", b"bytecount 1\n", b"quit\n", b"help\n"]),
        ),
        max_size=60,
    ),
    server=st.booleans(),
)
def test_arbitrary_input_never_raises_and_stays_bounded(
    make_host: Any, chunks: list[bytes], server: bool
) -> None:
    conn = core.ManagementConnection(make_host(server=server))
    now = 0.0
    for chunk in chunks:
        if conn.closed:
            break
        assert conn.wants_data or b"\n" in conn._inbuf
        while not conn.wants_data and not conn.closed:
            conn.data_to_send()
            conn.receive_data(b"", now)
        conn.receive_data(chunk, now)
        conn.handle_timer(now)
        now += 0.5
        assert len(conn._inbuf) <= core.MAX_INPUT_BYTES
        assert len(conn._block_lines) <= core.MAX_BLOCK_LINES
        out = conn.data_to_send()
        assert not out or out.endswith(b"\r\n") or out.endswith(b"ENTER PASSWORD:")
