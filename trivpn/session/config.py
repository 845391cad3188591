"""The session configuration: a profile plus overrides, translated and validated once.

Why a frozen object: the session stack used to re-read the profile on every attempt (wrap
keys, keepalive, reneg, ciphers) and validation was spread over the client's constructor.
`SessionConfig.from_profile` now does all of it once, so every `ConfigError` (unusable PEM,
no `ca`, a bad key derivation, an unsupported cipher list, a bad wrap key) surfaces before
anything connects, and the stack only reads plain values.

What OpenVPN allows inside a `<connection>` block (the remotes, the control-channel wrap,
connect-retry, server-poll-timeout, the proxy and bind options) lives in one
`ConnectionConfig` per block; everything else is global and lives in `SessionConfig`.
Secrets (keys, the password) are kept out of `repr`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import field
from typing import Literal, NamedTuple, TypedDict

from trivpn import __version__
from trivpn.controlchannel.wrap import (
    EARLY_NEG_START,
    ControlWrap,
    NoWrap,
    StaticKey,
    TLSAuth,
    TLSCrypt,
    TLSCryptV2ClientKey,
)
from trivpn.datachannel.crypto import SUPPORTED_DATA_CIPHERS, normalize_data_cipher
from trivpn.errors import ConfigError
from trivpn.profile.netopts import PullPolicy
from trivpn.profile.profile import Profile, Remote
from trivpn.records import dataclass
from trivpn.tlssession.keymethod import (
    IV_PROTO_AUTH_FAIL_TEMP,
    IV_PROTO_AUTH_PENDING_KW,
    IV_PROTO_CC_EXIT_NOTIFY,
    IV_PROTO_DATA_V2,
    IV_PROTO_DYN_TLS_CRYPT,
    IV_PROTO_NCP_P2P,
    IV_PROTO_REQUEST_PUSH,
    IV_PROTO_TLS_KEY_EXPORT,
    occ_options_string,
    peer_info_string,
)
from trivpn.tlssession.service import CipherPolicy
from trivpn.tlssession.tls import CERT_PROFILES, TLSConfig, TLSEngine

__all__ = [
    "ANNOUNCED_VERSION",
    "DEFAULT_CONNECT_RETRY",
    "HAND_WINDOW",
    "ConnectionConfig",
    "Keepalive",
    "Reneg",
    "Role",
    "SessionConfig",
    "SessionOverrides",
    "WrapConfig",
    "build_wrap",
    "iv_proto_bits",
    "negotiable_ciphers",
    "wrap_key_bytes",
]

log = logging.getLogger("trivpn")

#: OpenVPN's hand-window: the whole TLS + push exchange must finish within this.
HAND_WINDOW = 60.0
#: The version we announce; servers compare IV_VER against OpenVPN releases.
ANNOUNCED_VERSION = "2.6.14"
#: Reconnect backoff (first delay, cap) in seconds when the profile sets no connect-retry.
DEFAULT_CONNECT_RETRY = (1, 30)
#: OpenVPN's reneg-sec default.
DEFAULT_RENEG_SEC = 3600

#: Which end of the session we are; "server" comes with `trivpn serve`.
Role = Literal["client"]

WrapKind = Literal["none", "tls-auth", "tls-crypt", "tls-crypt-v2"]


class Keepalive(NamedTuple):
    """The profile's (ping, ping-restart, ping-exit) in seconds; 0 is off, pushed values win."""

    ping: float
    ping_restart: float
    ping_exit: float


class Reneg(NamedTuple):
    """When to renegotiate on our own: after `seconds`, `bytes` or `packets` (0 is off)."""

    seconds: float
    bytes: int
    packets: int


@dataclass(frozen=True, slots=True)
class WrapConfig:
    """The control-channel protection of one connection: its kind and its (parsed) key."""

    kind: WrapKind = "none"
    key: StaticKey | None = field(default=None, repr=False)
    key_direction: int | None = None
    digest: str = "SHA1"  # tls-auth HMAC (`auth`)
    wkc: bytes | None = field(default=None, repr=False)  # tls-crypt-v2: the wrapped client key

    @classmethod
    def from_profile(cls, profile: Profile) -> WrapConfig:
        """Parse the key once (a bad key is a ConfigError now, not at connect time)."""
        if profile.tls_crypt_v2:
            v2 = TLSCryptV2ClientKey.from_text(profile.tls_crypt_v2)
            return cls("tls-crypt-v2", v2.key, wkc=v2.wkc)
        if profile.tls_crypt:
            return cls("tls-crypt", StaticKey.from_text(profile.tls_crypt))
        if profile.tls_auth:
            return cls(
                "tls-auth",
                StaticKey.from_text(profile.tls_auth),
                profile.key_direction,
                profile.auth or "SHA1",
            )
        return cls()

    def build(self, now_unix: int) -> tuple[ControlWrap, bytes | None]:
        """A fresh wrap for one session (its replay state is per session), and the WKc to send."""
        key = self.key
        if key is None or self.kind == "none":
            return NoWrap(), None
        if self.kind == "tls-crypt-v2":
            # replay ids start at EARLY_NEG_START: "I can do the stateless cookie handshake"
            wrap = TLSCrypt(key, server=False, timestamp=now_unix, initial_packet_id=EARLY_NEG_START + 1)
            return wrap, self.wkc
        if self.kind == "tls-crypt":
            return TLSCrypt(key, server=False, timestamp=now_unix), None
        return TLSAuth(key, self.key_direction, self.digest, timestamp=now_unix), None

    @property
    def key_bytes(self) -> bytes | None:
        """The 256 bytes of the configured control-channel key (mixed into dyn-tls-crypt)."""
        return self.key.data if self.key is not None else None


def build_wrap(profile: Profile, now_unix: int) -> tuple[ControlWrap, bytes | None]:
    """The control-channel protection, and the tls-crypt-v2 WKc to send (if any)."""
    return WrapConfig.from_profile(profile).build(now_unix)


def wrap_key_bytes(profile: Profile) -> bytes | None:
    """The 256 bytes of the configured control-channel key (mixed into dyn-tls-crypt)."""
    return WrapConfig.from_profile(profile).key_bytes


def negotiable_ciphers(profile: Profile) -> list[str]:
    """The profile's data-ciphers we implement, normalized, in order (warns about the rest)."""
    out: list[str] = []
    for name in profile.data_ciphers:
        try:
            n = normalize_data_cipher(name)
        except ConfigError:
            log.warning("data-ciphers: %s is not supported and is not offered to the server", name)
            continue
        if n not in out:
            out.append(n)
    if not out:
        raise ConfigError(
            f"none of data-ciphers ({':'.join(profile.data_ciphers)}) is supported; "
            f"use one of {', '.join(SUPPORTED_DATA_CIPHERS)}"
        )
    return out


def iv_proto_bits(key_derivation: str, *, pull: bool = True) -> int:
    """The IV_PROTO capabilities we announce in peer-info.

    Without `pull` (point-to-point TLS mode) the push-related bits make no sense; NCP_P2P
    instead tells the peer to settle cipher and features from peer-info (negotiation.py).
    """
    bits = IV_PROTO_DATA_V2 | IV_PROTO_CC_EXIT_NOTIFY
    if pull:
        bits |= (
            IV_PROTO_REQUEST_PUSH
            | IV_PROTO_AUTH_PENDING_KW  # AUTH_PENDING,timeout N extends the wait
            | IV_PROTO_AUTH_FAIL_TEMP  # AUTH_FAILED,TEMP is retried, not fatal
        )
    else:
        bits |= IV_PROTO_NCP_P2P
    if key_derivation != "prf":
        # dynamic tls-crypt needs the exporter, so both come together
        bits |= IV_PROTO_TLS_KEY_EXPORT | IV_PROTO_DYN_TLS_CRYPT
    return bits


def _peer_info(ciphers: list[str], iv_proto: int) -> str:
    if iv_proto & IV_PROTO_NCP_P2P:  # no IV_NCP: that promises a pushed cipher
        return peer_info_string(
            version=ANNOUNCED_VERSION, platform="linux", ciphers=ciphers, iv_proto=iv_proto
        )
    return peer_info_string(
        version=ANNOUNCED_VERSION,
        platform="linux",
        ciphers=ciphers,
        iv_proto=iv_proto,
        extra={
            "IV_NCP": "2",
            "IV_LZO_STUB": "1",
            "IV_COMP_STUB": "1",
            "IV_COMP_STUBv2": "1",
            "IV_GUI_VER": f"trivpn_{__version__}",
        },
    )


@dataclass(frozen=True, slots=True, eq=False)
class ConnectionConfig:
    """One `<connection>` block (or the top-level remotes): where the server is, how to reach it."""

    #: the block's complete profile: the transport reads its proxy and bind options
    profile: Profile = field(repr=False)
    remotes: tuple[Remote, ...]
    wrap: WrapConfig
    #: reconnect backoff (first delay, cap) in seconds
    connect_retry: tuple[float, float]
    #: attempts per remote before giving up (None: unlimited)
    connect_retry_max: int | None
    #: seconds a connection attempt and the whole handshake may take (hand-window, or a
    #: shorter server-poll-timeout)
    connect_window: float

    def options_string(self, proto: str) -> str:
        """The OCC options string for a session over `proto`."""
        tls_auth = self.wrap.kind == "tls-auth"
        return occ_options_string(
            proto=proto,
            tls_client=True,
            tls_auth=tls_auth,
            key_direction=self.wrap.key_direction if tls_auth else None,
        )

    @classmethod
    def from_profile(cls, profile: Profile, hand_window: float) -> ConnectionConfig:
        first, cap = profile.connect_retry or DEFAULT_CONNECT_RETRY
        poll = profile.server_poll_timeout
        return cls(
            profile=profile,
            remotes=tuple(profile.remotes),
            wrap=WrapConfig.from_profile(profile),
            connect_retry=(float(first), float(cap)),
            connect_retry_max=profile.connect_retry_max,
            connect_window=float(min(hand_window, poll or hand_window)),
        )


def server_check_warning(profile: Profile) -> str | None:
    """OpenVPN's start-up warning when nothing checks that the peer is a *server*."""
    if profile.remote_cert_tls or profile.verify_x509_name or profile.peer_fingerprints:
        return None
    return (
        "no server certificate check is enabled (add 'remote-cert-tls server' or "
        "'verify-x509-name'): any certificate of the same CA, a client's too, could act as the server"
    )


def tls_config_from(profile: Profile) -> TLSConfig:
    """The client's TLS settings from the profile (tls-*, crl-verify, peer-fingerprint, askpass)."""
    version_min = profile.tls_version_min or "1.2"
    if version_min in ("1.0", "1.1"):  # we never speak below TLS 1.2
        version_min = "1.2"
    askpass = profile.askpass
    if askpass is True:
        raise ConfigError("the private key's passphrase must be entered (askpass) and nothing asked for it")
    profile_level = CERT_PROFILES.get(profile.tls_cert_profile) if profile.tls_cert_profile else None
    return TLSConfig(
        ca_pem=profile.ca or "",
        cert_pem=profile.cert,
        key_pem=profile.key,
        is_server=False,
        remote_cert_tls=profile.remote_cert_tls,
        verify_x509_name=profile.verify_x509_name,
        tls_version_min=version_min,
        tls_version_max=profile.tls_version_max,
        crl_pem=profile.crl_verify,
        crl_dir=profile.crl_dir,
        peer_fingerprints=tuple(profile.peer_fingerprints),
        cipher_list=profile.tls_cipher,
        ciphersuites=profile.tls_ciphersuites,
        groups=profile.tls_groups,
        security_level=profile_level,
        key_password=askpass.encode() if isinstance(askpass, str) else None,
    )


class SessionOverrides(TypedDict, total=False):
    """What the command line or the API may set on top of a profile (see `from_profile`)."""

    key_derivation: str
    family: int | None
    username: str
    password: str
    reauth: Callable[[], str] | None
    hand_window: float
    data_threads: bool
    low_latency: bool
    no_reconnect: bool
    give_up_after: float | None
    role: Role


@dataclass(frozen=True, slots=True, eq=False)
class SessionConfig:
    """Everything a session stack needs, built once from a profile plus overrides."""

    #: the top-level profile (the first connection's); kept for what is not translated yet
    profile: Profile = field(repr=False)
    #: the top-level remotes, then every further <connection> block, in order
    connections: tuple[ConnectionConfig, ...]
    tls: TLSConfig = field(repr=False)
    #: data ciphers we offer, normalized, in the profile's order
    ciphers: tuple[str, ...]
    #: the cipher used when the server negotiates none (data-ciphers-fallback or cipher)
    cipher_fallback: str | None
    #: HMAC digest of CBC data ciphers and tls-auth (`auth`)
    auth: str
    key_derivation: str  # "auto" | "ekm" | "prf"
    iv_proto: int
    peer_info: str
    keepalive: Keepalive
    reneg: Reneg
    hand_window: float
    pull: bool
    remote_random: bool
    #: seconds of failing name resolution after which we give up (None: never)
    resolv_retry: float | None
    family: int | None = None  # 4 or 6 overrides the remotes' protocol family
    username: str = ""
    password: str = field(default="", repr=False)
    #: auth-nocache: the password is forgotten after the first successful authentication
    auth_nocache: bool = False
    #: where a forgotten password comes from again (re-read the file, prompt); None: nowhere
    reauth: Callable[[], str] | None = field(default=None, repr=False)
    data_threads: bool = True
    low_latency: bool = False
    no_reconnect: bool = False
    #: seconds after which a client that never got a tunnel stops retrying (None: never)
    give_up_after: float | None = None
    role: Role = "client"

    @classmethod
    def from_profile(
        cls,
        profile: Profile,
        *,
        key_derivation: str = "auto",
        family: int | None = None,
        username: str = "",
        password: str = "",
        reauth: Callable[[], str] | None = None,
        hand_window: float | None = None,
        data_threads: bool = True,
        low_latency: bool = False,
        no_reconnect: bool = False,
        give_up_after: float | None = None,
        role: Role = "client",
    ) -> SessionConfig:
        """Translate and validate; every problem is a one-line ConfigError."""
        if key_derivation not in ("auto", "ekm", "prf"):
            raise ConfigError(f"key derivation must be auto, ekm or prf, not {key_derivation!r}")
        if role != "client":
            raise ConfigError(f"the {role} role is not supported yet")
        if hand_window is None:  # the profile's hand-window, else OpenVPN's 60 s
            hand_window = float(profile.hand_window or HAND_WINDOW)
        ciphers = negotiable_ciphers(profile)
        tls = tls_config_from(profile)
        if not profile.ca and not profile.peer_fingerprints:
            raise ConfigError("the profile has no 'ca': the server could not be verified")

        TLSEngine(tls)  # fail now, not after connecting, on unusable PEM
        if family not in (None, 4, 6):
            raise ConfigError("the address family must be 4 or 6")
        ka = profile.keepalive
        iv_proto = iv_proto_bits(key_derivation, pull=profile.pull)
        return cls(
            profile=profile,
            connections=tuple(
                ConnectionConfig.from_profile(p, hand_window) for p in (profile, *profile.alternatives)
            ),
            tls=tls,
            ciphers=tuple(ciphers),
            cipher_fallback=profile.data_ciphers_fallback or profile.cipher,
            auth=profile.auth or "SHA1",
            key_derivation=key_derivation,
            iv_proto=iv_proto,
            peer_info=_peer_info(ciphers, iv_proto),
            keepalive=Keepalive(
                float(profile.ping or (ka[0] if ka else 0)),
                float(profile.ping_restart or (ka[1] if ka else 0)),
                float(profile.ping_exit or 0),
            ),
            reneg=Reneg(
                float(profile.reneg_sec if profile.reneg_sec is not None else DEFAULT_RENEG_SEC),
                profile.reneg_bytes or 0,
                profile.reneg_pkts or 0,
            ),
            hand_window=hand_window,
            pull=profile.pull,
            remote_random=profile.remote_random,
            resolv_retry=profile.resolv_retry,
            family=family,
            username=username,
            password=password,
            auth_nocache=profile.auth_nocache,
            reauth=reauth,
            data_threads=data_threads,
            low_latency=low_latency,
            no_reconnect=no_reconnect,
            give_up_after=give_up_after,
            role=role,
        )

    def cipher_policy(self) -> CipherPolicy:
        """What we accept for the data channel (a fresh object per session)."""
        pull = PullPolicy(tuple(self.profile.pull_filters), self.profile.route_nopull)
        return CipherPolicy(
            list(self.ciphers), self.cipher_fallback, self.key_derivation, auth=self.auth, pull=pull,
            compression=None if self.pull else self.profile.compression,
        )
