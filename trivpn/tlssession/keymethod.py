"""Key method 2: the first TLS record each side sends, plus the strings it carries.

Layout (big-endian, reference §4.1), always exactly one TLS record of at most 2048 bytes:

    u32 0 | u8 2 | [client only: pre_master 48] | random1 32 | random2 32
    | options | username | password | peer-info

Each string is `u16 len | bytes | NUL` with `len` counting the NUL; an empty string is just
`u16 0`. OpenVPN tolerates a message that stops before username/password/peer-info (it reads
missing strings as empty), and ignores bytes after peer-info; we accept the same, but we refuse
truncated strings, strings without their NUL and oversize strings.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence

from trivpn.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from trivpn.records import dataclass

#: Wire value of the method byte; the receiver only looks at the low nibble (KEY_METHOD_MASK).
KEY_METHOD_2 = 2
KEY_METHOD_MASK = 0x0F
#: Capacity of the receiver's options buffer, NUL included (ssl.h).
TLS_OPTIONS_LEN = 512
#: Capacity for username and password, NUL included (misc.h; Debian builds with PKCS#11).
USER_PASS_LEN = 4096
#: OpenVPN reads the whole message with one SSL_read into a buffer of this size.
TLS_CHANNEL_BUF_SIZE = 2048
PRE_MASTER_LEN = 48
RANDOM_LEN = 32

# IV_PROTO bits announced in peer-info (ssl.h). Bit 0 is reserved; always set bit 1 because
# old servers test IV_PROTO >= 2.
IV_PROTO_DATA_V2 = 1 << 1
IV_PROTO_REQUEST_PUSH = 1 << 2
IV_PROTO_TLS_KEY_EXPORT = 1 << 3
IV_PROTO_AUTH_PENDING_KW = 1 << 4
IV_PROTO_NCP_P2P = 1 << 5
IV_PROTO_DNS_OPTION = 1 << 6
IV_PROTO_CC_EXIT_NOTIFY = 1 << 7
IV_PROTO_AUTH_FAIL_TEMP = 1 << 8
IV_PROTO_DYN_TLS_CRYPT = 1 << 9

#: Data-channel overhead OpenVPN 2.6 puts into the OCC link-mtu with its default cipher
#: settings (BF-CBC accounting: 8 IV + 8 block, SHA1 HMAC 20, packet id 4, opcode 1).
_OCC_LINK_MTU_OVERHEAD = 41
#: TCP adds the 2-byte packet length prefix.
_OCC_TCP_EXTRA = 2

_U16 = struct.Struct("!H")
_HEADER = b"\x00\x00\x00\x00" + bytes([KEY_METHOD_2])
_PEER_INFO_KEY = re.compile(r"[A-Za-z0-9_]+")
# Order in which 2.6.14 writes the variables it knows (ssl.c push_peer_info).
_PEER_INFO_ORDER = (
    "IV_VER",
    "IV_PLAT",
    "IV_TCPNL",
    "IV_MTU",
    "IV_NCP",
    "IV_CIPHERS",
    "IV_PROTO",
    "IV_LZO_STUB",
    "IV_COMP_STUB",
    "IV_COMP_STUBv2",
)


@dataclass(frozen=True, slots=True)
class KeyMethod2:
    """One side's key-method-2 message; `pre_master` is present only in the client's."""

    pre_master: bytes | None
    random1: bytes
    random2: bytes
    options: str
    username: str
    password: str
    peer_info: str


def _write_string(out: bytearray, text: str, capacity: int | None, what: str) -> None:
    if not text:
        out += b"\x00\x00"
        return
    raw = text.encode()
    if b"\x00" in raw:
        raise LocalProtocolError(f"key-method-2 {what} contains a NUL byte")
    length = len(raw) + 1
    if capacity is not None and length > capacity:
        raise LocalProtocolError(f"key-method-2 {what} is {length} bytes, more than {capacity}")
    out += _U16.pack(length)
    out += raw
    out += b"\x00"


def build_key_method_2(msg: KeyMethod2) -> bytes:
    """Serialise a key-method-2 message; LocalProtocolError if it cannot be sent as is."""
    out = bytearray(_HEADER)
    if msg.pre_master is not None:
        if len(msg.pre_master) != PRE_MASTER_LEN:
            raise LocalProtocolError(f"pre_master must be {PRE_MASTER_LEN} bytes")
        out += msg.pre_master
    if len(msg.random1) != RANDOM_LEN or len(msg.random2) != RANDOM_LEN:
        raise LocalProtocolError(f"random1 and random2 must be {RANDOM_LEN} bytes each")
    out += msg.random1
    out += msg.random2
    if not msg.options:
        raise LocalProtocolError("key-method-2 needs an options string")
    _write_string(out, msg.options, TLS_OPTIONS_LEN, "options string")
    _write_string(out, msg.username, USER_PASS_LEN, "username")
    _write_string(out, msg.password, USER_PASS_LEN, "password")
    _write_string(out, msg.peer_info, None, "peer-info")
    if len(out) > TLS_CHANNEL_BUF_SIZE:
        raise LocalProtocolError(
            f"key-method-2 message is {len(out)} bytes; it must fit one {TLS_CHANNEL_BUF_SIZE}-byte record"
        )
    return bytes(out)


def _read_string(data: bytes, pos: int, capacity: int | None, what: str) -> tuple[str, int]:
    """Read one length-prefixed, NUL-terminated string; absent at the end means empty."""
    if pos == len(data):
        return "", pos
    if pos + 2 > len(data):
        raise RemoteProtocolError(f"key-method-2 {what}: truncated length")
    (length,) = _U16.unpack_from(data, pos)
    pos += 2
    if length == 0:
        return "", pos
    if capacity is not None and length > capacity:
        raise RemoteProtocolError(f"key-method-2 {what}: {length} bytes exceeds {capacity}")
    end = pos + length
    if end > len(data):
        raise RemoteProtocolError(f"key-method-2 {what}: truncated ({length} bytes announced)")
    raw = data[pos : end - 1]
    if data[end - 1] != 0:
        raise RemoteProtocolError(f"key-method-2 {what}: missing NUL terminator")
    if b"\x00" in raw:
        raise RemoteProtocolError(f"key-method-2 {what}: embedded NUL")
    try:
        return raw.decode("utf-8"), end
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"key-method-2 {what}: not valid UTF-8") from None


def parse_key_method_2(data: bytes, *, from_client: bool) -> KeyMethod2:
    """Parse the peer's key-method-2 record; only RemoteProtocolError escapes."""
    fixed = len(_HEADER) + (PRE_MASTER_LEN if from_client else 0) + 2 * RANDOM_LEN
    if len(data) < fixed:
        raise RemoteProtocolError(f"key-method-2 message too short ({len(data)} bytes)")
    if data[:4] != b"\x00\x00\x00\x00":
        raise RemoteProtocolError("key-method-2 message does not start with a zero word")
    if data[4] & KEY_METHOD_MASK != KEY_METHOD_2:
        raise RemoteProtocolError(f"unknown key method/flags {data[4]:#04x}")
    pos = len(_HEADER)
    pre_master = None
    if from_client:
        pre_master = bytes(data[pos : pos + PRE_MASTER_LEN])
        pos += PRE_MASTER_LEN
    random1 = bytes(data[pos : pos + RANDOM_LEN])
    random2 = bytes(data[pos + RANDOM_LEN : pos + 2 * RANDOM_LEN])
    pos += 2 * RANDOM_LEN
    if pos == len(data):
        raise RemoteProtocolError("key-method-2 message has no options string")
    options, pos = _read_string(data, pos, TLS_OPTIONS_LEN, "options string")
    username, pos = _read_string(data, pos, USER_PASS_LEN, "username")
    password, pos = _read_string(data, pos, USER_PASS_LEN, "password")
    peer_info, pos = _read_string(data, pos, None, "peer-info")
    return KeyMethod2(pre_master, random1, random2, options, username, password, peer_info)


def occ_options_string(
    *,
    proto: str,
    tls_client: bool,
    tls_auth: bool,
    key_direction: int | None,
    tun_mtu: int = 1500,
    dev_type: str = "tun",
    comp_lzo: bool = False,
) -> str:
    """The OCC options string 2.6.14 sends with its default data-channel settings.

    `proto` is "udp"/"udp4"/"udp6" or "tcp"/"tcp-client"/"tcp-server" (and the 4/6 forms);
    OpenVPN always spells it as the IPv4 name. `key_direction` is the local tls-auth key
    direction (0/1), or None when tls-auth is bidirectional or absent. The values for udp/tcp
    with and without tls-auth were captured from the real binary; `comp_lzo` (which adds
    ",comp-lzo" and one byte of link-mtu) is from the source only.
    """
    p = proto.lower()
    if p in ("udp", "udp4", "udp6"):
        wire_proto, extra = "UDPv4", 0
    elif p in ("tcp", "tcp4", "tcp6", "tcp-client", "tcp4-client", "tcp6-client"):
        wire_proto = "TCPv4_SERVER" if not tls_client else "TCPv4_CLIENT"
        extra = _OCC_TCP_EXTRA
    elif p in ("tcp-server", "tcp4-server", "tcp6-server"):
        wire_proto, extra = "TCPv4_SERVER", _OCC_TCP_EXTRA
    else:
        raise ConfigError(f"unknown proto {proto!r} (use udp or tcp)")
    if dev_type not in ("tun", "tap"):
        raise ConfigError(f"unknown dev-type {dev_type!r} (use tun or tap)")
    if key_direction not in (None, 0, 1):
        raise ConfigError(f"key-direction must be 0 or 1, not {key_direction!r}")
    link_mtu = tun_mtu + _OCC_LINK_MTU_OVERHEAD + extra + (1 if comp_lzo else 0)
    parts = [
        "V4",
        f"dev-type {dev_type}",
        f"link-mtu {link_mtu}",
        f"tun-mtu {tun_mtu}",
        f"proto {wire_proto}",
    ]
    if comp_lzo:
        parts.append("comp-lzo")
    if key_direction is not None:
        parts.append(f"keydir {key_direction}")
    parts += ["auth SHA1", "keysize 128"]
    if tls_auth:
        parts.append("tls-auth")
    parts.append("key-method 2")
    parts.append("tls-client" if tls_client else "tls-server")
    return ",".join(parts)


def _check_peer_info_item(key: str, value: str) -> None:
    if not _PEER_INFO_KEY.fullmatch(key):
        raise ConfigError(f"peer-info name {key!r} must be letters, digits and underscores")
    if any(not (0x20 <= ord(ch) < 0x7F) for ch in value):
        raise ConfigError(f"peer-info value for {key} must be printable ASCII on one line")


def peer_info_string(
    *,
    version: str,
    platform: str,
    ciphers: Sequence[str],
    iv_proto: int,
    mtu: int | None = None,
    extra: Mapping[str, str] = {},  # noqa: B006 - read only
) -> str:
    """The peer-info block ("IV_VER=...\\n" lines) a pull client sends.

    Variables 2.6.14 knows are written in its order; other `extra` items follow as given.
    """
    if not iv_proto & IV_PROTO_DATA_V2:
        # Old servers test IV_PROTO >= 2; OpenVPN always sets this bit.
        raise ConfigError("IV_PROTO must include IV_PROTO_DATA_V2")
    if iv_proto < 0 or iv_proto >= 1 << 16:
        raise ConfigError(f"IV_PROTO {iv_proto} is out of range")
    items: dict[str, str] = {"IV_VER": version, "IV_PLAT": platform}
    if mtu is not None:
        items["IV_MTU"] = str(mtu)
    if ciphers:
        items["IV_CIPHERS"] = ":".join(ciphers)
    items["IV_PROTO"] = str(iv_proto)
    for key, value in extra.items():
        if key in items:
            raise ConfigError(f"peer-info {key} is set twice")
        items[key] = value
    for key, value in items.items():
        _check_peer_info_item(key, value)
    rank = {name: i for i, name in enumerate(_PEER_INFO_ORDER)}
    ordered = sorted(items.items(), key=lambda kv: rank.get(kv[0], len(rank)))
    return "".join(f"{key}={value}\n" for key, value in ordered)
