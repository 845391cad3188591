"""OpenVPN's management output lines, byte for byte (checked against Debian's openvpn 2.6.14).

Every line goes out with CRLF. Text that comes from elsewhere (log messages, env values,
reasons) has CR and LF replaced by spaces, so nothing can smuggle a fake `>` line or a fake
`END` into the stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from trivpn.records import dataclass

CRLF = b"\r\n"
BANNER = ">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info"
PASSWORD_PROMPT = b"ENTER PASSWORD:"  # sent without a line ending, as the binary does
PASSWORD_OK = "SUCCESS: password is correct"
UNKNOWN_COMMAND = "ERROR: unknown command, enter 'help' for more options"
MANAGEMENT_VERSION = 5


def clean(text: str) -> str:
    """Make `text` safe inside one protocol line."""
    return text.replace("\r", " ").replace("\n", " ")


def encode_lines(lines: Iterable[str]) -> bytes:
    """Join protocol lines with CRLF endings (UTF-8; invalid characters replaced)."""
    return b"".join(clean(line).encode("utf-8", "replace") + CRLF for line in lines)


@dataclass(frozen=True, slots=True)
class StateRecord:
    """One entry of the state history (management-notes: the nine `state` fields)."""

    time: int
    name: str
    description: str = ""
    local_ip: str = ""
    remote_ip: str = ""
    remote_port: str = ""
    local_addr: str = ""
    local_port: str = ""
    local_ipv6: str = ""

    def line(self) -> str:
        """`time,NAME,desc,ip,rip,rport,laddr,lport[,ip6]`: the IPv6 field only when set."""
        fields = [
            str(self.time), self.name, self.description, self.local_ip, self.remote_ip,
            self.remote_port, self.local_addr, self.local_port,
        ]
        if self.local_ipv6:
            fields.append(self.local_ipv6)
        return ",".join(clean(f) for f in fields)


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One log (or echo) history entry; `flags` is a subset of I F N W D, maybe empty."""

    time: int
    flags: str
    text: str

    def line(self) -> str:
        return f"{self.time},{self.flags},{clean(self.text)}"

    def echo_line(self) -> str:
        return f"{self.time},{clean(self.text)}"


def state_notification(record: StateRecord) -> str:
    return ">STATE:" + record.line()


def log_notification(record: LogRecord) -> str:
    return ">LOG:" + record.line()


def echo_notification(record: LogRecord) -> str:
    return ">ECHO:" + record.echo_line()


def bytecount(bytes_in: int, bytes_out: int) -> str:
    return f">BYTECOUNT:{bytes_in},{bytes_out}"


def bytecount_cli(cid: int, bytes_in: int, bytes_out: int) -> str:
    return f">BYTECOUNT_CLI:{cid},{bytes_in},{bytes_out}"


def hold(waiting: int) -> str:
    return f">HOLD:Waiting for hold release:{waiting}"


def password_needed(kind: str = "Auth") -> str:
    return f">PASSWORD:Need '{clean(kind)}' username/password"


#: OpenVPN reads each peer-info line into a 256-byte buffer: at most 255 bytes of `k=v`.
PEER_INFO_LINE_MAX = 255
#: after the `=`, OpenVPN replaces whitespace, non-printable bytes and these with `_`
_PEER_INFO_UNSAFE = frozenset(b"$(`")
_PEER_INFO_NAME = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def peer_info_env(items: Mapping[str, str], prefix: str = "IV_") -> list[tuple[str, str]]:
    """The client's peer-info lines as `>CLIENT:ENV` pairs, the way OpenVPN 2.6's
    `validate_peer_info_line` passes them: a name of ASCII letters, digits and `_` (else the
    line is left out), a value whose control, non-ASCII and space bytes and the shell's
    $ ( and backquote become `_`, the line cut at 255 bytes. The values are the client's
    choice: no control byte (ESC, NUL, ...) reaches a management client's terminal or parser."""
    out: list[tuple[str, str]] = []
    for key, value in items.items():
        name = key.encode("utf-8", "replace")
        if not key.startswith(prefix) or not name or not set(name) <= _PEER_INFO_NAME:
            continue
        raw = value.encode("utf-8", "replace")[: max(0, PEER_INFO_LINE_MAX - len(name) - 1)]
        safe = bytes(b if 0x21 <= b <= 0x7E and b not in _PEER_INFO_UNSAFE else 0x5F for b in raw)
        out.append((key, safe.decode("ascii")))
    return out


def password_failed(kind: str = "Auth") -> str:
    return f">PASSWORD:Verification Failed: '{clean(kind)}'"


def fatal(text: str) -> str:
    return ">FATAL:" + clean(text)


def client_event(
    kind: str, fields: Sequence[int | str], env: Sequence[tuple[str, str]] | None
) -> list[str]:
    """`>CLIENT:KIND,f1,…` then, when `env` is given, `>CLIENT:ENV,k=v` lines and `ENV,END`."""
    lines = [">CLIENT:" + ",".join([kind, *(clean(str(f)) for f in fields)])]
    if env is not None:
        lines.extend(f">CLIENT:ENV,{clean(k)}={clean(v)}" for k, v in env)
        lines.append(">CLIENT:ENV,END")
    return lines
