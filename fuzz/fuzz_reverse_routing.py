"""atheris harness for the relay's name routing: the TLS ClientHello parser and the HTTP
request-head reader (trivpn/reverse/http/sni.py, hostrouter.py).

Invariants: any bytes, fed in any split, end in a `Route`, a `Reject` or "need more"
(never another exception); a routed decision forwards exactly the bytes that were read;
`client_hello`/`server_name` raise only `SniError`. The first byte picks the target (even:
TLS, odd: HTTP) and the read size.

Seeds: the committed corpus (`corpus()`: a synthetic ClientHello, whole and in two records,
and HTTP heads) and `SEEDS`, built at import: real ClientHellos that Python's ssl module sends for a
few names and protocol versions, the same split over two records, and HTTP heads.

Run (atheris is optional and imported only in main())::

    python fuzz/fuzz_reverse_routing.py -max_total_time=300
"""

from __future__ import annotations

import ssl
import sys
from collections import Counter

from trivpn.reverse.http.hostrouter import HeadReader, Reject, Route
from trivpn.reverse.http.sni import SniError, SniReader, client_hello, server_name

DOMAIN = "tunnels.example.net"
REACHED: Counter[str] = Counter()


def real_hello(name: str | None, version: ssl.TLSVersion | None = None) -> bytes:
    """The first flight Python's ssl module sends to `name` (no network)."""
    ctx = ssl.create_default_context()
    if name is None:
        ctx.check_hostname = False
    if version is not None:
        ctx.maximum_version = version
    out = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def two_records(hello: bytes) -> bytes:
    """The same handshake message split over two TLS records."""
    body = hello[5:]
    cut = len(body) // 3
    head = hello[:3]
    return (
        head + cut.to_bytes(2, "big") + body[:cut]
        + head + (len(body) - cut).to_bytes(2, "big") + body[cut:]
    )


def synthetic_hello(name: str) -> bytes:
    """A minimal TLS 1.3 ClientHello for `name`, byte for byte the same on every run (the
    committed corpus, fuzz/make_corpus.py); real ones carry fresh randoms and key shares."""
    sni = name.encode()
    entry = b"\x00" + len(sni).to_bytes(2, "big") + sni
    names = len(entry).to_bytes(2, "big") + entry
    exts = b"\x00\x00" + len(names).to_bytes(2, "big") + names + b"\x00\x2b\x00\x03\x02\x03\x04"
    body = (
        b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
        + len(exts).to_bytes(2, "big") + exts
    )
    msg = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(msg).to_bytes(2, "big") + msg


def corpus() -> dict[str, bytes]:
    """The deterministic seeds, for fuzz/make_corpus.py (mode byte first)."""
    hello = synthetic_hello(f"api.{DOMAIN}")
    return {
        "gen-hello-api.bin": b"\x00" + hello,
        "gen-hello-two-records.bin": b"\x02" + two_records(hello),
        "gen-hello-other-domain.bin": b"\x04" + synthetic_hello("example.com"),
        "gen-head-api.bin": b"\x01" + HEADS[0],
        "gen-head-post.bin": b"\x03" + HEADS[1],
    }


HEADS = [
    f"GET /users?id=1 HTTP/1.1\r\nHost: api.{DOMAIN}:8080\r\nAccept: */*\r\n\r\n".encode(),
    f"POST /x HTTP/1.1\r\nHost: WEB.{DOMAIN}.\r\nContent-Length: 3\r\n\r\nabc".encode(),
    b"GET / HTTP/1.0\r\n\r\n",
]


def _seeds() -> list[bytes]:
    hellos = [
        real_hello(f"api.{DOMAIN}"),
        real_hello(f"web.{DOMAIN}", ssl.TLSVersion.TLSv1_2),
        real_hello("example.com"),
        real_hello(None),
    ]
    return [b"\x00" + h for h in hellos] + [b"\x02" + two_records(h) for h in hellos] + [
        b"\x01" + h for h in HEADS
    ]


SEEDS = _seeds()


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    step = 1 + (mode >> 1) % 64
    reader: SniReader | HeadReader
    if mode % 2 == 0:
        try:
            got = client_hello(body)
            if isinstance(got, bytes):
                REACHED["sni: hello complete"] += 1
                if server_name(got):
                    REACHED["sni: a server name"] += 1
        except SniError:
            pass
        reader = SniReader(DOMAIN, 0.0, max_hello=4096)
    else:
        reader = HeadReader(DOMAIN, 0.0, max_head=4096)
    decision: Route | Reject | None = None
    fed = 0
    for i in range(0, len(body), step):
        decision = reader.receive_data(body[i : i + step], 1.0)
        fed = i + step
        if decision is not None:
            break
    if decision is None:
        decision = reader.receive_data(b"", 1.0)  # end of file always decides
    assert decision is not None
    if isinstance(decision, Route):
        REACHED[f"{type(reader).__name__}: routed"] += 1
        assert decision.preface == body[:fed], "a routed connection forwards what was read"
        assert decision.name and decision.host.endswith("." + DOMAIN)
    else:
        REACHED[f"{type(reader).__name__}: rejected {decision.status}"] += 1


def main() -> None:
    import atheris  # type: ignore[import-untyped]  # optional, ships no type stubs

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
