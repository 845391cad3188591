"""Typed items that travel on the memory channels between layers.

Channels carry lists of these (batches). Data-plane channels carry plain `list[bytes]`
instead, so the hot path allocates nothing per packet beyond the packet itself.

The aliases at the end name what each control-plane channel carries, so a service's
constructor says exactly which items it may receive and send (the channel map). They are
strings for the interpreter (the codec and reliable-layer types they name import this
module), real unions for the type checker.
"""

from __future__ import annotations

from dataclasses import field
from typing import TYPE_CHECKING, Any, TypeAlias

from trivpn.records import dataclass

if TYPE_CHECKING:
    from trivpn.controlchannel.packet import ControlPacket
    from trivpn.profile.push import PushedSettings
    from trivpn.reliabletransport.core import OutgoingPacket


@dataclass(frozen=True, slots=True)
class ResetComplete:
    """The hard-reset exchange finished: both session ids are known (muxer → up)."""

    local_session_id: bytes
    remote_session_id: bytes
    #: early-negotiation TLVs the server put in its reset (empty normally)
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class SoftReset:
    """A key renegotiation for `key_id` (up: the peer's soft reset; down: send ours)."""

    key_id: int


@dataclass(frozen=True, slots=True)
class DynamicWrapKey:
    """The dynamic tls-crypt key for control packets of key id > 0 (tlssession → muxer).

    It travels down through the control channel and the reliable layer like any other item,
    so the muxer has it before the first renegotiation packet can exist.
    """

    key: bytes


@dataclass(frozen=True, slots=True)
class ControlOut:
    """Control packets ready to be framed for one key id (reliable → muxer)."""

    key_id: int
    packets: list[OutgoingPacket]


@dataclass(frozen=True, slots=True)
class ReliableMessage:
    """One reliable control message, in order (reliable ⇄ controlchannel)."""

    key_id: int
    opcode: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ciphertext:
    """TLS bytes for one key id (controlchannel ⇄ tlssession)."""

    key_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class InstallKey:
    """Data-channel keys for one key id (tlssession → datachannel)."""

    key_id: int
    key2: bytes
    cipher: str
    peer_id: int | None
    compression: str | None
    ping_interval: float
    ping_restart: float = 0.0
    ping_exit: float = 0.0
    #: HMAC digest for a legacy CBC cipher (None for AEAD ciphers)
    auth: str | None = None
    #: seal with this key at once; False: receive with it now, send once the peer proved it
    #: has it or `ActivateKey` comes (the key schedule decides by role)
    send_now: bool = True


@dataclass(frozen=True, slots=True)
class ActivateKey:
    """Seal with the receive-only key `key_id` now, even if the peer never proved it has it
    (tlssession → datachannel; the fallback for a silent peer)."""

    key_id: int


@dataclass(frozen=True, slots=True)
class RetireKey:
    """The lame-duck key `key_id` reached the end of its transition window (tlssession →
    datachannel): stop decrypting with it."""

    key_id: int


@dataclass(frozen=True, slots=True)
class SendExitNotify:
    """Ask the data channel to send OCC EXIT (explicit-exit-notify without cc-exit)."""

    count: int = 1


@dataclass(slots=True)
class TunnelUp:
    """The tunnel carries traffic: pushed settings applied and keys installed."""

    settings: PushedSettings
    cipher: str
    key_derivation: str
    peer_subject: str
    tls_version: str
    extra: dict[str, Any] = field(default_factory=dict)
    #: the verified peer chain, DER, leaf first (scripts' tls_id_N / X509_N_* variables)
    peer_chain: tuple[bytes, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ClientReady:
    """Server role: a client finished key method 2 and its first data key is installed.

    Carries what the server needs to admit it: the negotiated settings, the option list it
    pushes, the client's peer-info and credentials (the password is kept out of repr).
    """

    peer_info: Any  # tlssession.negotiation.PeerInfo
    options: tuple[str, ...]
    cipher: str
    key_derivation: str
    peer_subject: str
    tls_version: str
    username: str = ""
    password: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """Server role with a verify script or management-client-auth: the client's key method 2
    arrived; its keys and PUSH_REPLY (or, on a renegotiation, the new key) wait until the
    session answers with `AuthVerdict` (the password is kept out of repr)."""

    username: str
    peer_subject: str
    password: str = field(default="", repr=False)
    #: the client's raw peer-info block (IV_* lines, for the scripts' environment)
    peer_info: str = ""
    #: the client's verified certificate chain as DER, leaf first (empty without one)
    peer_chain: tuple[bytes, ...] = field(default=(), repr=False)
    #: 0: the first key (admission); else a renegotiation re-authenticating (password or token)
    key_id: int = 0
    #: the certificate's CN, printable (never parsed from `peer_subject`); "" without one
    common_name: str = ""


@dataclass(frozen=True, slots=True)
class AuthPending:
    """The server is still authenticating us (AUTH_PENDING): wait up to `timeout` seconds."""

    timeout: float


@dataclass(frozen=True, slots=True)
class AuthTokenRenewed:
    """Client role: the server pushed a new auth-token while the tunnel was up (auth-gen-token
    renewal); reconnects and renegotiations use it from now on."""

    token: str = field(repr=False)  # a secret: never in a log


@dataclass(frozen=True, slots=True)
class KeysRenegotiated:
    """New data keys are in use (`count`: renegotiations of this session so far)."""

    key_id: int
    count: int


# -- commands and usage reports for the key schedule (typed, never strings) ---------------


@dataclass(frozen=True, slots=True)
class Renegotiate:
    """Command to the TLS service: start a renegotiation now; `reason` is logged."""

    reason: str = "requested"


@dataclass(frozen=True, slots=True)
class SendExit:
    """Command to the TLS service: tell the peer we leave (EXIT when cc-exit was negotiated);
    a server may name the control message (management `client-kill CID HALT`)."""

    message: str | None = None


@dataclass(frozen=True, slots=True)
class AuthVerdict:
    """Command to the TLS service: the answer to an `AuthRequest` (`reason` goes into
    AUTH_FAILED when refused)."""

    accept: bool
    reason: str = ""
    #: auth-gen-token: the token pushed in the PUSH_REPLY (a secret: kept out of repr)
    auth_token: str | None = field(default=None, repr=False)
    #: the key the answer is for (the AuthRequest's)
    key_id: int = 0


@dataclass(frozen=True, slots=True)
class PushAuthToken:
    """Command to the TLS service (server): send a renewed auth-token to the client as
    `PUSH_REPLY,auth-token ...` (auth-gen-token renewal; kept out of repr)."""

    token: str = field(repr=False)


#: Everything the session sends to the TLS service's command channel.
TLSCommand = Renegotiate | SendExit | AuthVerdict | PushAuthToken


@dataclass(frozen=True, slots=True)
class KeyUsage:
    """What the data channel's primary key has carried so far (data plane → key schedule).

    The key schedule polls it to apply reneg-bytes / reneg-pkts and to renew keys before
    packet ids wrap; the hot path itself carries no renegotiation logic.
    """

    key_id: int | None
    bytes: int = 0
    packets: int = 0
    near_wrap: bool = False


# -- what each control-plane channel carries (one batch = a list of these) ---------------

#: packet muxer → reliable: the reset exchange's result, then parsed control packets.
MuxToReliable: TypeAlias = "ResetComplete | ControlPacket"
#: reliable → packet muxer: packets to frame per key id, and the dynamic tls-crypt key.
ReliableToMux: TypeAlias = "ControlOut | DynamicWrapKey"
#: reliable → control channel: the reset exchange's result, then in-order messages.
ReliableToControl: TypeAlias = "ResetComplete | ReliableMessage"
#: control channel → reliable: messages to send reliably, and the key bound for the muxer.
ControlToReliable: TypeAlias = "ReliableMessage | DynamicWrapKey"
#: control channel → TLS session: reset result, TLS bytes, the peer's soft resets.
ControlToTLS: TypeAlias = "ResetComplete | Ciphertext | SoftReset"
#: TLS session → control channel: TLS bytes, our soft resets, the dynamic tls-crypt key.
TLSToControl: TypeAlias = "Ciphertext | SoftReset | DynamicWrapKey"
#: TLS session / key schedule → data channel: key installs, activations and retirements,
#: exit notice.
TLSToData: TypeAlias = "InstallKey | ActivateKey | RetireKey | SendExitNotify"
#: TLS session → the session runner (one item per send, not a batch).
SessionEvent: TypeAlias = "TunnelUp | AuthPending | ClientReady | AuthRequest | KeysRenegotiated | AuthTokenRenewed"
