"""What the two ends agree on for the data channel: cipher (NCP), key derivation, flags.

Client side: the server decides and pushes (`cipher`, `key-derivation tls-ekm` or
`protocol-flags ...`); `choose_cipher` checks the pushed cipher against our data-ciphers.

Server side (reference openvpn-server.md §1.7, §1.9, §1.10): the client's peer-info says what
it can do. `negotiate` picks the first of *our* data-ciphers that the client lists in
IV_CIPHERS (IV_NCP >= 2 without IV_CIPHERS means AES-256-GCM:AES-128-GCM; no cipher
information at all means "poor man's NCP" from the OCC `cipher`, then data-ciphers-fallback),
uses TLS-EKM when the client's IV_PROTO has the key-export bit, and `push_options` appends the
per-client options in OpenVPN's order (peer-id, cipher, protocol-flags / key-derivation).

Point-to-point TLS mode (a `tls-client` profile without `pull`, against `--tls-server` with no
`mode server`): nothing is pushed, so both ends settle the data channel from each other's
peer-info with the same deterministic rule ("P2P NCP", OpenVPN 2.6). The cipher is the first
entry of the *TLS server's* data-ciphers list that appears, spelled exactly alike, in the TLS
client's list (`p2p_common_cipher`); no common entry, or no IV_CIPHERS at all, means the
data-ciphers-fallback. Only when the peer announces the NCP_P2P bit do the protocol options
follow its IV_PROTO: DATA_V2 gives peer-id 0x76706E ("vpn"), or, with TLS-EKM, three bytes
exported under "EXPORTER-OpenVPN-p2p-peerid"; the key-export, cc-exit and dynamic tls-crypt
bits switch on those features. Each end tests the bits of the *other*, so both agree as long
as each announces what it does (`p2p_agreement`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import field

from trivpn.datachannel.crypto import is_cbc, normalize_data_cipher
from trivpn.errors import (
    ConfigError,
    FatalError,
    LocalProtocolError,
    RemoteProtocolError,
    SessionRestart,
)
from trivpn.messages import InstallKey
from trivpn.profile.push import PullPolicy, PushedSettings, PushRejected, parse_push_options
from trivpn.records import dataclass
from trivpn.redact import redact_option
from trivpn.tlssession.core import push_reply_messages
from trivpn.tlssession.keymethod import (
    IV_PROTO_CC_EXIT_NOTIFY,
    IV_PROTO_DATA_V2,
    IV_PROTO_DYN_TLS_CRYPT,
    IV_PROTO_NCP_P2P,
    IV_PROTO_REQUEST_PUSH,
    IV_PROTO_TLS_KEY_EXPORT,
)
from trivpn.tlssession.tls import TLSEngine

log = logging.getLogger("trivpn")

#: RFC 5705 label of 2.6's dynamic tls-crypt key (ssl_backend.h).
DYNAMIC_TLS_CRYPT_LABEL = b"EXPORTER-OpenVPN-dynamic-tls-crypt"
#: What a client with IV_NCP >= 2 but no IV_CIPHERS supports (ssl_ncp.c).
IV_NCP2_CIPHERS = ("AES-256-GCM", "AES-128-GCM")
#: RFC 5705 label of the peer-id two P2P peers with TLS-EKM share (ssl_backend.h).
P2P_PEERID_LABEL = b"EXPORTER-OpenVPN-p2p-peerid"
#: The peer-id of P2P peers with DATA_V2 but without TLS-EKM: "vpn" in ASCII.
P2P_DEFAULT_PEER_ID = 0x76706E
#: Longest cipher list we look at (OpenVPN caps its own at 127 characters).
MAX_CIPHER_LIST = 1024
#: The reason OpenVPN sends with AUTH_FAILED when NCP finds nothing.
NO_SHARED_CIPHER = "Data channel cipher negotiation failed (no shared cipher)"


class NegotiationError(Exception):
    """The client cannot be served (no shared cipher, EKM required but not offered)."""


@dataclass(frozen=True, slots=True)
class CipherPolicy:
    """What this end accepts for the data channel (both roles).

    `data_ciphers` in preference order; `fallback` is data-ciphers-fallback (or the legacy
    `cipher`); `key_derivation` is "auto", "ekm" (require TLS-EKM) or "prf" (never EKM);
    `auth` is the HMAC digest used with CBC ciphers.
    """

    data_ciphers: tuple[str, ...]
    fallback: str | None = None
    key_derivation: str = "auto"
    auth: str = "SHA1"
    #: client: the profile's pull-filter / route-nopull, applied to the PUSH_REPLY
    pull: PullPolicy | None = None
    #: point-to-point mode: the profile's compression framing (comp-lzo no, compress stub...),
    #: since no PUSH_REPLY says it
    compression: str | None = None

    def __init__(
        self,
        data_ciphers: Sequence[str],
        fallback: str | None = None,
        key_derivation: str = "auto",
        auth: str = "SHA1",
        pull: PullPolicy | None = None,
        compression: str | None = None,
    ) -> None:
        if key_derivation not in ("auto", "ekm", "prf"):
            raise ConfigError(f"key derivation must be auto, ekm or prf, not {key_derivation!r}")
        object.__setattr__(self, "data_ciphers", tuple(data_ciphers))
        object.__setattr__(self, "fallback", fallback)
        object.__setattr__(self, "key_derivation", key_derivation)
        object.__setattr__(self, "auth", auth)
        object.__setattr__(self, "pull", pull)
        object.__setattr__(self, "compression", compression)


def choose_cipher(settings: PushedSettings, policy: CipherPolicy) -> str:
    """Client: the data cipher from the pushed `cipher`, else our fallback (FatalError)."""
    if settings.cipher:
        name = normalize_data_cipher(settings.cipher)
        if name not in [normalize_data_cipher(c) for c in policy.data_ciphers]:
            raise FatalError(f"the server chose data cipher {name}, which is not in data-ciphers")
        return name
    if policy.fallback:
        return normalize_data_cipher(policy.fallback)
    raise FatalError(
        "the server did not negotiate a data cipher (no 'cipher' pushed); "
        "set data-ciphers-fallback to the server's cipher"
    )


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What a client told the server about itself: its peer-info block (key method 2),
    parsed (`items` keeps every line), its username and its certificate subject."""

    items: dict[str, str] = field(default_factory=dict)
    username: str = ""
    peer_subject: str = ""
    #: the certificate's CN, printable (never parsed from `peer_subject`)
    common_name: str = ""

    @classmethod
    def parse(
        cls, text: str, *, username: str = "", peer_subject: str = "", common_name: str = ""
    ) -> PeerInfo:
        """`IV_VER=2.6.14\\nIV_PROTO=990\\n...` → PeerInfo; malformed lines are skipped."""
        items: dict[str, str] = {}
        for line in text.split("\n")[:256]:  # bounded: peer-info comes from the peer
            key, sep, value = line.partition("=")
            if sep and key and key not in items:
                items[key] = value
        return cls(items, username, peer_subject, common_name)

    def _int(self, key: str) -> int:
        value = self.items.get(key, "")
        return int(value) if value.isascii() and value.isdigit() and len(value) <= 9 else 0

    @property
    def iv_proto(self) -> int:
        return self._int("IV_PROTO")

    @property
    def ncp(self) -> int:
        return self._int("IV_NCP")

    @property
    def ciphers(self) -> tuple[str, ...] | None:
        """The client's cipher list (IV_CIPHERS, or IV_NCP>=2's implied list), or None."""
        listed = self.items.get("IV_CIPHERS")
        if listed:
            return tuple(c.strip().upper() for c in listed.split(":") if c.strip())
        return IV_NCP2_CIPHERS if self.ncp >= 2 else None

    def has(self, bit: int) -> bool:
        return bool(self.iv_proto & bit)


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What the server agreed with one client (it also shapes the PUSH_REPLY)."""

    cipher: str
    ekm: bool
    push_cipher: bool  # the client does NCP, so `cipher` is pushed
    peer_id: int | None  # pushed (P_DATA_V2) when the client has DATA_V2
    cc_exit: bool
    dyn_tls_crypt: bool
    request_push: bool  # the client takes a PUSH_REPLY without asking first


def _occ_cipher(options: str) -> str | None:
    for part in options.split(","):
        words = part.split()
        if len(words) == 2 and words[0] == "cipher":
            return words[1].upper()
    return None


def _canonical(name: str) -> str | None:
    try:
        return normalize_data_cipher(name)
    except ConfigError:
        return None


def negotiate(
    peer: PeerInfo, occ_options: str, policy: CipherPolicy, peer_id: int | None
) -> Negotiated:
    """Server: the data-channel settings for this client, or NegotiationError."""
    ours = [c for c in (_canonical(n) for n in policy.data_ciphers) if c is not None]
    offered = peer.ciphers
    if offered is not None:
        theirs = {c for c in (_canonical(n) for n in offered) if c is not None}
        cipher = next((c for c in ours if c in theirs), None)
    else:  # no cipher information: poor man's NCP, then the fallback
        occ = _canonical(_occ_cipher(occ_options) or "")
        cipher = occ if occ in ours else None
        if cipher is None and policy.fallback:
            cipher = _canonical(policy.fallback)
    if cipher is None:
        raise NegotiationError(NO_SHARED_CIPHER)
    ekm = peer.has(IV_PROTO_TLS_KEY_EXPORT) and policy.key_derivation != "prf"
    if policy.key_derivation == "ekm" and not ekm:
        raise NegotiationError("TLS-EKM key derivation is required but the client lacks it")
    return Negotiated(
        cipher=cipher,
        ekm=ekm,
        push_cipher=offered is not None,
        peer_id=peer_id if peer.has(IV_PROTO_DATA_V2) else None,
        cc_exit=peer.has(IV_PROTO_CC_EXIT_NOTIFY),
        dyn_tls_crypt=ekm and peer.has(IV_PROTO_DYN_TLS_CRYPT),
        request_push=peer.has(IV_PROTO_REQUEST_PUSH),
    )


def push_options(base: Sequence[str], neg: Negotiated) -> list[str]:
    """The whole option list for one client: `base`, then the per-client part."""
    out = list(base)
    if neg.peer_id is not None:
        out.append(f"peer-id {neg.peer_id}")
    if neg.push_cipher:
        out.append(f"cipher {neg.cipher}")
    if neg.cc_exit:
        flags = ["cc-exit"] + (["tls-ekm"] if neg.ekm else [])
        flags += ["dyn-tls-crypt"] if neg.dyn_tls_crypt else []
        out.append("protocol-flags " + " ".join(flags))
    elif neg.ekm:
        out.append("key-derivation tls-ekm")
    return out


def dynamic_wrap_key(engine: TLSEngine, wrap_key: bytes | None) -> bytes:
    """EKM "EXPORTER-OpenVPN-dynamic-tls-crypt", XORed with the configured wrap key.

    Mixing in the static key keeps renegotiations protected by what the user configured
    even if the TLS session's secrets leaked.
    """
    key = engine.export_keying_material(DYNAMIC_TLS_CRYPT_LABEL, 256)
    if wrap_key:
        key = bytes(a ^ b for a, b in zip(key, wrap_key, strict=True))
    return key


@dataclass(frozen=True, slots=True)
class Agreement:
    """Everything both ends settled for the session's data channel (fixed after key 0).

    `settings` is the PUSH_REPLY parsed: what the client received, or what the server sends
    (`options`, in order). The data channel's compression framing follows it on both ends.
    """

    settings: PushedSettings
    cipher: str
    ekm: bool
    cc_exit: bool
    dyn_tls_crypt: bool
    peer_id: int | None
    options: tuple[str, ...] = ()
    request_push: bool = False

    @property
    def key_derivation(self) -> str:
        return "tls-ekm" if self.ekm else "tls1-prf"


def client_agreement(options: Sequence[str], policy: CipherPolicy) -> Agreement:
    """Client: what the server's PUSH_REPLY settled (FatalError if we cannot accept it)."""
    try:
        settings = parse_push_options(options, policy.pull)
    except PushRejected as exc:  # OpenVPN restarts the session (SIGUSR1)
        raise SessionRestart(f"{exc}; restarting") from None
    except RemoteProtocolError as exc:
        raise FatalError(f"unusable PUSH_REPLY from the server: {exc}") from None
    for dropped in settings.filtered:
        log.info("pushed option removed by pull-filter/route-nopull: %s", redact_option(dropped)[:80])
    try:
        cipher = choose_cipher(settings, policy)
    except ConfigError as exc:
        raise FatalError(str(exc)) from None
    ekm = settings.key_derivation_ekm or "tls-ekm" in settings.protocol_flags
    if policy.key_derivation == "ekm" and not ekm:
        raise FatalError("TLS-EKM key derivation was required but the server did not agree")
    flags = settings.protocol_flags
    return Agreement(settings, cipher, ekm, "cc-exit" in flags, "dyn-tls-crypt" in flags and ekm, settings.peer_id)


def server_agreement(
    peer: PeerInfo, occ_options: str, policy: CipherPolicy, base: Sequence[str], peer_id: int | None
) -> Agreement:
    """Server: NCP and flags for this client plus the options to push (NegotiationError if
    the client cannot be served, FatalError if our own push options are unusable)."""
    neg = negotiate(peer, occ_options, policy, peer_id)
    options = push_options(base, neg)
    try:
        push_reply_messages(options)
        settings = parse_push_options(options)
    except (LocalProtocolError, RemoteProtocolError) as exc:
        raise FatalError(f"unusable push options: {exc}") from None
    return Agreement(
        settings, neg.cipher, neg.ekm, neg.cc_exit, neg.dyn_tls_crypt, neg.peer_id, tuple(options), neg.request_push
    )


def p2p_common_cipher(tls_server_ciphers: str, tls_client_ciphers: str) -> str | None:
    """P2P NCP: the first of the TLS server's ':'-separated ciphers the TLS client lists too.

    Both ends call this with the same two lists (ours and the peer's IV_CIPHERS, in TLS-role
    order), so both get the same answer. Names compare exactly, as OpenVPN compares them;
    empty entries never match. The lists come from the peer: bounded before splitting.
    """
    client = {c for c in tls_client_ciphers[:MAX_CIPHER_LIST].split(":") if c}
    for name in tls_server_ciphers[:MAX_CIPHER_LIST].split(":"):
        if name and name in client:
            return name
    return None


def p2p_agreement(
    peer: PeerInfo, policy: CipherPolicy, *, tls_server: bool, export: Callable[[bytes, int], bytes]
) -> Agreement:
    """P2P mode: what both ends settle without a PUSH_REPLY (FatalError if nothing fits).

    `export(label, length)` is the TLS session's keying-material exporter (for the EKM
    peer-id). Our own IV_PROTO carries the key-export and dynamic tls-crypt bits unless
    `policy.key_derivation` is "prf", so that is what decides our half of each feature.
    """
    ours = ":".join(c for c in (_canonical(n) for n in policy.data_ciphers) if c is not None)
    theirs = peer.items.get("IV_CIPHERS")
    cipher = None
    if theirs is not None:
        server, client = (ours, theirs) if tls_server else (theirs, ours)
        cipher = p2p_common_cipher(server, client)
    if cipher is None and policy.fallback:
        cipher = _canonical(policy.fallback)
    if cipher is None:
        raise FatalError(
            "no data cipher in common with the peer and no data-ciphers-fallback "
            f"(ours: {ours or '-'}; the peer's: {(theirs or '-')[:120]})"
        )
    cipher = normalize_data_cipher(cipher)
    we_export = policy.key_derivation != "prf"
    ekm = cc_exit = dyn = False
    peer_id = None
    if peer.has(IV_PROTO_NCP_P2P):
        cc_exit = peer.has(IV_PROTO_CC_EXIT_NOTIFY)
        ekm = we_export and peer.has(IV_PROTO_TLS_KEY_EXPORT)
        dyn = we_export and peer.has(IV_PROTO_DYN_TLS_CRYPT)
        if peer.has(IV_PROTO_DATA_V2):
            peer_id = P2P_DEFAULT_PEER_ID
            if ekm:
                peer_id = int.from_bytes(export(P2P_PEERID_LABEL, 3), "big")
    if policy.key_derivation == "ekm" and not ekm:
        raise FatalError("TLS-EKM key derivation was required but the peer does not offer it")
    log.info("P2P NCP: cipher %s, %s, peer-id %s", cipher, "tls-ekm" if ekm else "tls1-prf", peer_id)
    return Agreement(PushedSettings(compression=policy.compression), cipher, ekm, cc_exit, dyn, peer_id)


def first_install_key(
    agreement: Agreement, key2: bytes, keepalive: tuple[float, float, float], policy: CipherPolicy, *, server: bool
) -> InstallKey:
    """The InstallKey of key 0; later keys copy it with their own id and key block."""
    ping, restart, ping_exit = keepalive
    s = agreement.settings
    if not server:  # pushed timers win on the client
        ping = float(s.ping) if s.ping is not None else ping
        restart = float(s.ping_restart) if s.ping_restart is not None else restart
    auth = policy.auth if is_cbc(agreement.cipher) else None
    return InstallKey(0, key2, agreement.cipher, agreement.peer_id, s.compression, ping, restart, ping_exit, auth)
