"""The `ifconfig-pool-persist` file: `CN,IPv4,IPv6` lines, as OpenVPN reads and writes them.

IPv4 is the client address (subnet) or the /30 base (net30); either address may be empty.
Lines starting with `#` or `;` and blank lines are skipped. A file is user-editable and
may be damaged, so a bad line never stops the server: it is skipped and counted with a
warning. The file is bounded (MAX_PERSIST_BYTES, MAX_LINE): beyond that the rest is
ignored with one warning. Writing is the service's job (atomically, every `sec` seconds
and at shutdown); this module only turns bytes into entries and entries into text.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from trivpn.records import dataclass
from trivpn.server.pool import AddressPool, PersistEntry

__all__ = [
    "MAX_LINE",
    "MAX_PERSIST_BYTES",
    "PersistFile",
    "dump_persist",
    "parse_persist",
    "serialize_persist",
]

MAX_PERSIST_BYTES = 4 * 1024 * 1024  # 65,536 handles of long lines fit comfortably
MAX_LINE = 512  # CN (OpenVPN caps it at 64) plus two addresses, with room to spare
MAX_WARNINGS_KEPT = 20  # messages kept verbatim; `bad_lines` counts all of them


@dataclass(frozen=True, slots=True)
class PersistFile:
    """What a persist file held: the usable entries and what was wrong with the rest."""

    entries: tuple[PersistEntry, ...]
    bad_lines: int
    warnings: tuple[str, ...]


def _parse_line(line: str) -> PersistEntry | str:
    fields = line.split(",")
    if len(fields) < 2:
        return "expected CN,IPv4[,IPv6]"
    if len(fields) > 3:
        return "too many fields"
    cn, v4_text = fields[0], fields[1]
    v6_text = fields[2] if len(fields) == 3 else ""
    if not cn:
        return "empty common name"
    if not cn.isprintable():
        return "common name with control characters"
    v4: IPv4Address | None = None
    v6: IPv6Address | None = None
    try:
        if v4_text:
            v4 = IPv4Address(v4_text)
        if v6_text:
            v6 = IPv6Address(v6_text)
    except ValueError as exc:
        return f"bad address: {exc}"
    if v4 is None and v6 is None:
        return "no address"
    return PersistEntry(cn, v4, v6)


def parse_persist(data: bytes) -> PersistFile:
    """Parse a persist file's bytes; never raises."""
    entries: list[PersistEntry] = []
    warnings: list[str] = []
    bad = 0

    def warn(msg: str) -> None:
        nonlocal bad
        bad += 1
        if len(warnings) < MAX_WARNINGS_KEPT:
            warnings.append(msg)

    if len(data) > MAX_PERSIST_BYTES:
        warn(f"pool-persist: file larger than {MAX_PERSIST_BYTES} bytes, the rest is ignored")
        data = data[:MAX_PERSIST_BYTES]
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        raw = raw.rstrip(b"\r")
        if not raw or raw[:1] in (b"#", b";"):
            continue
        if len(raw) > MAX_LINE:
            warn(f"pool-persist line {lineno}: longer than {MAX_LINE} bytes")
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            warn(f"pool-persist line {lineno}: not UTF-8")
            continue
        result = _parse_line(line.strip())
        if isinstance(result, str):
            warn(f"pool-persist line {lineno}: {result}")
        else:
            entries.append(result)
    return PersistFile(tuple(entries), bad, tuple(warnings))


def serialize_persist(entries: list[PersistEntry]) -> tuple[str, int]:
    """The file text for `entries`, and how many were left out because their CN cannot be
    written unambiguously (a comma, a line break or a leading comment character)."""
    lines: list[str] = []
    skipped = 0
    for e in entries:
        cn = e.common_name
        if not cn or "," in cn or not cn.isprintable() or cn[0] in "#;":
            skipped += 1
            continue
        v4 = "" if e.ipv4 is None else str(e.ipv4)
        v6 = "" if e.ipv6 is None else str(e.ipv6)
        lines.append(f"{cn},{v4},{v6}\n")
    return "".join(lines), skipped


def dump_persist(pool: AddressPool) -> tuple[str, int]:
    """What the periodic write puts in the file for `pool` (see serialize_persist)."""
    return serialize_persist(pool.persist_entries())
