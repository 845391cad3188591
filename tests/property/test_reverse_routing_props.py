"""Hypothesis: the relay's name-routing parsers (ClientHello SNI, request head) end every
input in a decision or "need more", raise nothing else, and stay bounded; also drives the
atheris harness fuzz/fuzz_reverse_routing.py with hypothesis' inputs."""

from __future__ import annotations

import importlib.util
import pathlib

from hypothesis import given, settings
from hypothesis import strategies as st

from trivpn.reverse.http.hostrouter import HeadReader, Reject, Route
from trivpn.reverse.http.sni import SniError, SniReader, client_hello, server_name

_spec = importlib.util.spec_from_file_location(
    "fuzz_reverse_routing", pathlib.Path(__file__).parents[2] / "fuzz" / "fuzz_reverse_routing.py"
)
assert _spec is not None and _spec.loader is not None
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)
D = fuzz.DOMAIN


@given(st.binary(max_size=3000))
def test_fuzz_harness_random_bytes(data: bytes) -> None:
    fuzz.test_one_input(data)


@given(st.sampled_from(fuzz.SEEDS), st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 255)),
                                           max_size=8))
def test_fuzz_harness_mutated_seeds(seed: bytes, edits: list[tuple[int, int]]) -> None:
    data = bytearray(seed)
    for pos, value in edits:
        data[1 + pos % max(1, len(data) - 1)] = value
    fuzz.test_one_input(bytes(data))


@given(st.data())
@settings(max_examples=60)
def test_real_hello_split_anywhere_routes_the_same(data: st.DataObject) -> None:
    hello = data.draw(st.sampled_from([s[1:] for s in fuzz.SEEDS if s[0] in (0, 2)]))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(hello)), max_size=6)))
    reader = SniReader(D, 0.0)
    got: Route | Reject | None = None
    prev = 0
    for cut in [*cuts, len(hello)]:
        if cut > prev:
            got = reader.receive_data(hello[prev:cut], 0.1)
            prev = cut
            if got is not None:
                break
    body = client_hello(hello)
    assert isinstance(body, bytes)
    name = server_name(body)
    if name is not None and name.endswith("." + D):
        assert isinstance(got, Route) and got.host == name
    else:
        assert isinstance(got, Reject) and got.status == 112


@given(st.binary(max_size=600), st.integers(1, 64))
def test_sni_parsers_raise_only_sni_error(data: bytes, step: int) -> None:
    for prefix in (b"", b"\x16\x03\x01", b"\x16\x03\x03\x01\x00\x01"):
        try:
            got = client_hello(prefix + data)
            if isinstance(got, bytes):
                server_name(got)
        except SniError:
            pass
        try:
            server_name(data)
        except SniError:
            pass


@given(
    st.lists(st.sampled_from([b"GET ", b"/", b" HTTP/1.1\r\n", b"Host: ", b"api.", D.encode(),
                              b"\r\n", b"X: y\r\n", b":", b"\x00", b" "]), max_size=40),
    st.integers(1, 32),
)
def test_head_reader_decides_or_waits(parts: list[bytes], step: int) -> None:
    raw = b"".join(parts)
    reader = HeadReader(D, 0.0, max_head=512)
    got: Route | Reject | None = None
    for i in range(0, len(raw), step):
        got = reader.receive_data(raw[i : i + step], 0.0)
        if got is not None:
            break
    if got is None:
        got = reader.receive_data(b"", 0.0)
    assert got is not None
    if isinstance(got, Route):
        assert raw.startswith(got.preface) and got.name == "api"
