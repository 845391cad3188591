"""Data-channel key material (`struct key2`, 256 bytes) for one OpenVPN key_id.

Theory of operation. Both peers must end up with the same 256-byte block; §4.2 of the
reference says how it is sliced (client->server cipher|hmac, then server->client cipher|hmac).
There are two ways to get there, and the server picks one through what it pushes:

* TLS-EKM (`key-derivation tls-ekm` or `protocol-flags ... tls-ekm`): the block is the TLS
  keying-material exporter output for the label "EXPORTER-OpenVPN-datakeys", no context.
  Nothing from key-method 2 enters it; the TLS session alone binds the keys.
* The legacy TLS1-PRF path (RFC 2246 PRF: P_MD5 xor P_SHA1 over the two halves of the
  secret): a 48-byte master secret is made from the client's pre_master and both random1
  values, then the block from the master, both random2 values and both control-channel
  session ids. The order is always client first, server second, whichever side computes it,
  which is why the functions take the two messages by role and not as local/peer.

The PRF uses MD5; that is OpenVPN's choice and only matters outside FIPS mode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trivpn import digests
from trivpn.errors import LocalProtocolError
from trivpn.tlssession.keymethod import PRE_MASTER_LEN, RANDOM_LEN, KeyMethod2

if TYPE_CHECKING:
    from trivpn.tlssession.tls import TLSEngine

#: Size of OpenVPN's `struct key2`: two directions x (64 cipher + 64 hmac) bytes.
KEY2_LEN = 256
#: Master secret length of the PRF path (SSL3_MASTER_SECRET_SIZE).
MASTER_SECRET_LEN = 48
SID_LEN = 8
#: RFC 5705 label OpenVPN uses for the exporter (ssl_backend.h).
EKM_LABEL = b"EXPORTER-OpenVPN-datakeys"
#: PRF "labels"; they are simply the start of the seed, without a trailing space.
KEY_EXPANSION_ID = b"OpenVPN key expansion"
MASTER_SECRET_ID = b"OpenVPN master secret"


def _p_hash(digest: str, secret: bytes, seed: bytes, length: int) -> bytes:
    """RFC 2246 P_hash: HMAC(secret, A(i) || seed) for A(1), A(2), ... until `length`."""
    out = bytearray()
    a = seed
    while len(out) < length:
        a = digests.hmac_digest(secret, a, digest)
        out += digests.hmac_digest(secret, a + seed, digest)
    return bytes(out[:length])


def tls1_prf(secret: bytes, seed: bytes, length: int) -> bytes:
    """The TLS 1.0 PRF: P_MD5 over the first half of the secret xor P_SHA1 over the second.

    For an odd secret length the halves share the middle byte (RFC 2246 §5).
    """
    if length < 0:
        raise LocalProtocolError("PRF output length must not be negative")
    half = (len(secret) + 1) // 2
    s1 = secret[:half]
    s2 = secret[len(secret) - half :]
    md5 = _p_hash("md5", s1, seed, length)
    sha1 = _p_hash("sha1", s2, seed, length)
    return (int.from_bytes(md5, "big") ^ int.from_bytes(sha1, "big")).to_bytes(length, "big")


def key2_from_prf(
    client: KeyMethod2, server: KeyMethod2, client_sid: bytes, server_sid: bytes
) -> bytes:
    """The 256-byte key block by OpenVPN's PRF path; arguments by role, not by side."""
    if client.pre_master is None or len(client.pre_master) != PRE_MASTER_LEN:
        raise LocalProtocolError("the client's key-method-2 must carry a 48-byte pre_master")
    for km in (client, server):
        if len(km.random1) != RANDOM_LEN or len(km.random2) != RANDOM_LEN:
            raise LocalProtocolError("key-method-2 randoms must be 32 bytes")
    if len(client_sid) != SID_LEN or len(server_sid) != SID_LEN:
        raise LocalProtocolError("session ids must be 8 bytes")
    master = tls1_prf(
        client.pre_master,
        MASTER_SECRET_ID + client.random1 + server.random1,
        MASTER_SECRET_LEN,
    )
    return tls1_prf(
        master,
        KEY_EXPANSION_ID + client.random2 + server.random2 + client_sid + server_sid,
        KEY2_LEN,
    )


def key2_from_ekm(engine: TLSEngine) -> bytes:
    """The 256-byte key block by the TLS exporter (needs a finished handshake)."""
    return engine.export_keying_material(EKM_LABEL, KEY2_LEN)
