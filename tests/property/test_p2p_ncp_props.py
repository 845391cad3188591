"""P2P NCP is symmetric: whatever the two data-ciphers lists, both peers settle the same thing.

Each end runs `p2p_agreement` with its own list and the other's peer-info, one as the TLS
server and one as the TLS client; they must agree on cipher, key derivation, peer-id and
flags, and the cipher must be one both lists contain, the TLS server's first such choice.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trivpn.datachannel.crypto import SUPPORTED_DATA_CIPHERS
from trivpn.errors import FatalError
from trivpn.session.config import _peer_info, iv_proto_bits
from trivpn.tlssession.negotiation import (
    Agreement,
    CipherPolicy,
    PeerInfo,
    p2p_agreement,
    p2p_common_cipher,
)

CIPHER_LISTS = st.lists(st.sampled_from(SUPPORTED_DATA_CIPHERS), min_size=1, max_size=6, unique=True)
NAMES = st.lists(st.text(st.characters(blacklist_characters=":\n\r\x00"), max_size=12), max_size=8)


def _shared_export(label: bytes, length: int) -> bytes:
    return bytes(range(length))  # both ends export the same TLS session's material


def _side(ours: list[str], theirs: list[str], kd_ours: str, kd_theirs: str, *, tls_server: bool) -> Agreement | None:
    peer_info = _peer_info(theirs, iv_proto_bits(kd_theirs, pull=False))
    try:
        return p2p_agreement(PeerInfo.parse(peer_info), CipherPolicy(ours, key_derivation=kd_ours),
                             tls_server=tls_server, export=_shared_export)
    except FatalError:
        return None


@given(CIPHER_LISTS, CIPHER_LISTS, st.sampled_from(["auto", "prf"]), st.sampled_from(["auto", "prf"]))
def test_both_peers_agree(server: list[str], client: list[str], kd_server: str, kd_client: str) -> None:
    a = _side(server, client, kd_server, kd_client, tls_server=True)
    b = _side(client, server, kd_client, kd_server, tls_server=False)
    assert (a is None) == (b is None)
    common = [c for c in server if c in client]
    if a is None or b is None:
        assert not common
        return
    assert a.cipher == b.cipher == common[0]
    assert (a.ekm, a.peer_id, a.cc_exit, a.dyn_tls_crypt) == (b.ekm, b.peer_id, b.cc_exit, b.dyn_tls_crypt)
    assert a.ekm == (kd_server != "prf" and kd_client != "prf")


@given(NAMES, NAMES)
def test_common_cipher_is_the_servers_first_shared_name(server: list[str], client: list[str]) -> None:
    got = p2p_common_cipher(":".join(server), ":".join(client))
    shared = [n for n in server if n and n in client]
    assert got == (shared[0] if shared else None)


@pytest.mark.parametrize("kd", ["auto", "prf"])
def test_same_list_same_everything(kd: str) -> None:
    ours = list(SUPPORTED_DATA_CIPHERS[:3])
    a = _side(ours, ours, kd, kd, tls_server=True)
    assert a is not None and a.cipher == "AES-256-GCM"
