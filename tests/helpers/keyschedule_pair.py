"""A client KeySchedule and a server KeySchedule joined in memory, with real TLS.

Items one end sends (SoftReset, Ciphertext) are handed to the other directly; there is no
reliable layer, so `pump` delivers in order and a test may drop or duplicate items on the
way. Time is a plain float the test advances.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from trivpn.messages import (
    Ciphertext,
    DynamicWrapKey,
    InstallKey,
    ResetComplete,
    RetireKey,
    SoftReset,
)
from trivpn.testing.pki import PKI, generate_pki
from trivpn.tlssession.core import TLSSession
from trivpn.tlssession.keymethod import (
    IV_PROTO_AUTH_FAIL_TEMP,
    IV_PROTO_AUTH_PENDING_KW,
    IV_PROTO_CC_EXIT_NOTIFY,
    IV_PROTO_DATA_V2,
    IV_PROTO_DYN_TLS_CRYPT,
    IV_PROTO_REQUEST_PUSH,
    IV_PROTO_TLS_KEY_EXPORT,
    occ_options_string,
    peer_info_string,
)
from trivpn.tlssession.keyschedule import Event, KeySchedule, KeyScheduleConfig
from trivpn.tlssession.negotiation import CipherPolicy
from trivpn.tlssession.tls import TLSConfig

CLIENT_SID = bytes.fromhex("0102030405060708")
SERVER_SID = bytes.fromhex("a1a2a3a4a5a6a7a8")
#: What trivpn's client announces (client.py): every 2.6 feature it implements.
FULL_IV_PROTO = (
    IV_PROTO_DATA_V2
    | IV_PROTO_REQUEST_PUSH
    | IV_PROTO_CC_EXIT_NOTIFY
    | IV_PROTO_AUTH_PENDING_KW
    | IV_PROTO_AUTH_FAIL_TEMP
    | IV_PROTO_TLS_KEY_EXPORT
    | IV_PROTO_DYN_TLS_CRYPT
)
BASE_PUSH = ("route-gateway 10.8.0.1", "topology subnet", "ping 10", "ping-restart 60", "ifconfig 10.8.0.2 255.255.255.0")


@functools.cache
def pki() -> PKI:
    return generate_pki()


def client_peer_info(
    iv_proto: int = FULL_IV_PROTO, ciphers: Sequence[str] = ("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"),
    ncp: bool = True,
) -> str:
    return peer_info_string(
        version="2.6.14", platform="linux", ciphers=ciphers, iv_proto=iv_proto,
        extra={"IV_NCP": "2"} if ncp else {},
    )


def client_factory(peer_info: str, password: str = "secret") -> Callable[[int, str | None], TLSSession]:
    p = pki()
    cfg = TLSConfig(ca_pem=p.ca_cert, cert_pem=p.client_cert, key_pem=p.client_key, remote_cert_tls="server")
    options = occ_options_string(proto="udp", tls_client=True, tls_auth=False, key_direction=None)

    def make(key_id: int, token: str | None) -> TLSSession:
        return TLSSession(cfg, options_string=options, peer_info=peer_info, username="alice",
                          password=token or password, pull=key_id == 0)

    return make


def server_factory() -> Callable[[int, str | None], TLSSession]:
    p = pki()
    cfg = TLSConfig(ca_pem=p.ca_cert, cert_pem=p.server_cert, key_pem=p.server_key, is_server=True,
                    remote_cert_tls="client")
    options = occ_options_string(proto="udp", tls_client=False, tls_auth=False, key_direction=None)

    def make(key_id: int, token: str | None) -> TLSSession:
        return TLSSession(cfg, options_string=options)

    return make


def client_config(**kw: object) -> KeyScheduleConfig:
    base = KeyScheduleConfig(role="client", policy=CipherPolicy(["AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"]),
                             reneg_sec=0, keepalive=(0.0, 0.0, 0.0))
    return replace(base, **kw)  # type: ignore[arg-type]  # test helper: keyword overrides


def server_config(**kw: object) -> KeyScheduleConfig:
    base = KeyScheduleConfig(role="server", policy=CipherPolicy(["AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"]),
                             reneg_sec=0, keepalive=(10.0, 120.0, 0.0), push=BASE_PUSH, peer_id=7)
    return replace(base, **kw)  # type: ignore[arg-type]  # test helper: keyword overrides


@dataclass
class Side:
    """One end plus everything it emitted so far."""

    ks: KeySchedule
    events: list[Event] = field(default_factory=list)
    wrap_keys: list[bytes] = field(default_factory=list)
    #: the data channel as the events describe it: key id → key2 (installed, not retired)
    installed: dict[int, bytes] = field(default_factory=dict)
    data_primary: int | None = None

    def collect(self) -> list[Event]:
        new = self.ks.events()
        for ev in new:
            if isinstance(ev, InstallKey):
                if self.data_primary is not None:
                    # the data channel keeps the new key and the previous one only
                    self.installed = {self.data_primary: self.installed[self.data_primary]}
                self.installed[ev.key_id] = ev.key2
                self.data_primary = ev.key_id
            elif isinstance(ev, RetireKey):
                self.installed.pop(ev.key_id, None)
        self.events.extend(new)
        return new


Filter = Callable[[str, SoftReset | Ciphertext], int]  # how many copies to deliver (0 drops)


class Pair:
    def __init__(self, client: KeyScheduleConfig | None = None, server: KeyScheduleConfig | None = None,
                 *, peer_info: str | None = None, password: str = "secret") -> None:
        self.now = 0.0
        self.client = Side(KeySchedule(client or client_config(),
                                       client_factory(peer_info or client_peer_info(), password)))
        self.server = Side(KeySchedule(server or server_config(), server_factory()))

    def start(self) -> None:
        self.client.ks.receive_reset(ResetComplete(CLIENT_SID, SERVER_SID), self.now)
        self.server.ks.receive_reset(ResetComplete(SERVER_SID, CLIENT_SID), self.now)

    def _deliver(self, to: Side, item: SoftReset | Ciphertext) -> None:
        if isinstance(item, SoftReset):
            to.ks.receive_soft_reset(item.key_id, self.now)
        else:
            to.ks.receive_ciphertext(item.key_id, item.data, self.now)

    def pump(self, copies: Filter | None = None, rounds: int = 40) -> None:
        """Move items both ways until both ends are quiet (bounded)."""
        for _ in range(rounds):
            moved = False
            for name, src, dst in (("c2s", self.client, self.server), ("s2c", self.server, self.client)):
                for item in src.ks.items_to_send(self.now):
                    if isinstance(item, DynamicWrapKey):
                        src.wrap_keys.append(item.key)
                        continue
                    moved = True
                    for _ in range(1 if copies is None else copies(name, item)):
                        self._deliver(dst, item)
                src.collect()
            dst_events = self.client.collect() + self.server.collect()
            if not moved and not dst_events:
                return
        raise AssertionError("the two key schedules did not settle")

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for side in (self.client, self.server):
            deadline = side.ks.get_timer()
            if deadline is not None and deadline <= self.now:
                side.ks.handle_timer(self.now)
        self.pump()

    def run_until_idle(self, horizon: float, step: float = 1.0) -> None:
        end = self.now + horizon
        while self.now < end:
            self.advance(step)

    def connect(self) -> None:
        self.start()
        self.pump()
