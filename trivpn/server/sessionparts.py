"""What one client's server-role session stack is built from, derived from a ServerConfig.

Kept apart from the services so that the per-client service only wires channels: the
control-channel wrap (tls-auth / tls-crypt, keyed from the server config, one fresh wrap per
use as the demultiplexer's `WrapFactory` wants), the TLS configuration, the OCC options
string and the key schedule's configuration with a per-client push callable and peer-id.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import field
from typing import TYPE_CHECKING

from trivpn.controlchannel.wrap import ControlWrap, NoWrap, StaticKey, TLSAuth, TLSCrypt
from trivpn.controlchannel.wrapv2 import TLSCryptV2Server, TLSCryptV2ServerKey
from trivpn.errors import LocalProtocolError
from trivpn.records import dataclass
from trivpn.server.config_model import ServerConfig
from trivpn.server.crlfile import CRLFile
from trivpn.server.demux_types import WrapFactory
from trivpn.session.stack import TLSPorts
from trivpn.tlssession.config import KeyScheduleConfig
from trivpn.tlssession.core import TLSSession
from trivpn.tlssession.crl import check_crl
from trivpn.tlssession.keymethod import occ_options_string
from trivpn.tlssession.keyschedule import KeySchedule
from trivpn.tlssession.negotiation import CipherPolicy, PeerInfo
from trivpn.tlssession.service import TLSService
from trivpn.tlssession.tls import TLSConfig

if TYPE_CHECKING:
    from trivpn.server.admission import ServerScripts

__all__ = ["SessionParts", "session_parts"]


@dataclass(frozen=True, slots=True)
class SessionParts:
    """The per-server constants every client session is built from."""

    config: ServerConfig
    wrap_factory: WrapFactory
    wrap_overhead: int
    wrap_key: bytes | None  # the static key mixed into dynamic tls-crypt
    tls_config: TLSConfig
    options: dict[str, str]  # our OCC options string per transport ("udp", "tcp")
    crl_file: CRLFile | None = None  # crl-verify FILE: re-read when it changes (crlfile.py)
    #: tls-crypt-v2: every client brings its own key (then `wrap_factory` is not used and
    #: `wrap_key` is per client, see `for_client_key`)
    tls_crypt_v2: TLSCryptV2Server | None = None
    #: scripts' daemon variables and the auth-token key, shared by every client (admission.py)
    scripts: ServerScripts = field(default=None)  # type: ignore[assignment]  # session_parts always sets it

    def for_client_key(self, client_key: bytes | None) -> SessionParts:
        """The parts of one tls-crypt-v2 client: its key Kc goes into dyn-tls-crypt."""
        return self if client_key is None else dataclasses.replace(self, wrap_key=client_key)

    def tls_factory(
        self, peer_id: int, push: Callable[[PeerInfo], Sequence[str]], made: Callable[[TLSService], object],
        *, proto: str = "udp",
    ) -> Callable[[TLSPorts], TLSService]:
        """How the stack of the client with `peer_id` (on `proto`) builds its TLS service."""
        cfg = self.config
        ks_config = KeyScheduleConfig(
            role="server",
            policy=CipherPolicy(cfg.data_ciphers, cfg.data_ciphers_fallback, "auto", cfg.auth or "SHA1"),
            reneg_sec=float(cfg.reneg_sec),
            hand_window=float(cfg.hand_window),
            keepalive=(float(cfg.ping or 0), float(cfg.ping_restart or 0), 0.0),
            wrap_key=self.wrap_key,
            push=push,
            peer_id=peer_id,
            verify_auth=self.scripts.hold or cfg.management_client_auth,
            reauth=cfg.auth_user_pass_verify is not None or cfg.management_client_auth,
        )
        tls_config, options, crl_file = self.tls_config, self.options[proto], self.crl_file
        first = tls_config
        if crl_file is not None:  # a new client: take up a replaced CRL file, as OpenVPN
            first = dataclasses.replace(tls_config, crl_pem=crl_file.current())

        def session(key_id: int, token: str | None) -> TLSSession:
            # Every renegotiation is a full handshake that checks the client's certificate
            # again, against the CRL of that moment (as OpenVPN reloads it per key state): a
            # certificate revoked since the client came loses it at the next renegotiation.
            config = first
            if key_id != 0 and crl_file is not None:
                config = dataclasses.replace(tls_config, crl_pem=crl_file.current())
            return TLSSession(config, options_string=options)

        def make(ports: TLSPorts) -> TLSService:
            tls = TLSService(
                KeySchedule(ks_config, session),
                from_cc=ports.from_cc, to_cc=ports.to_cc, to_data=ports.to_data,
                events=ports.events, commands=ports.commands, usage=ports.usage,
            )
            made(tls)
            return tls

        return make


def session_parts(cfg: ServerConfig) -> SessionParts:
    """Build the wraps and TLS settings once (ConfigError for what trivpn cannot serve)."""
    stamp = int(time.time())
    factory: WrapFactory
    v2: TLSCryptV2Server | None = None
    if cfg.tls_crypt_v2 is not None:
        v2 = TLSCryptV2Server(TLSCryptV2ServerKey.from_text(cfg.tls_crypt_v2), timestamp=stamp)

        def factory(pid: int) -> ControlWrap:
            raise LocalProtocolError("tls-crypt-v2: control wraps are keyed per client")

        wrap_key: bytes | None = None
    elif cfg.tls_crypt is not None:
        key = StaticKey.from_text(cfg.tls_crypt)

        def factory(pid: int) -> ControlWrap:
            return TLSCrypt(key, server=True, timestamp=stamp, initial_packet_id=pid)

        wrap_key = key.data
    elif cfg.tls_auth is not None:
        key = StaticKey.from_text(cfg.tls_auth)
        direction, digest = cfg.key_direction, cfg.auth or "SHA1"

        def factory(pid: int) -> ControlWrap:
            return TLSAuth(key, direction, digest, timestamp=stamp, initial_packet_id=pid)

        wrap_key = key.data
    else:

        def factory(pid: int) -> ControlWrap:
            return NoWrap()

        wrap_key = None
    tls_config = TLSConfig(
        ca_pem=cfg.ca, cert_pem=cfg.cert, key_pem=cfg.key, is_server=True,
        remote_cert_tls=cfg.remote_cert_tls, tls_version_min=cfg.tls_version_min or "1.2",
        crl_pem=cfg.crl_verify, verify_client_cert=cfg.verify_client_cert,
    )
    crl_file = None
    if cfg.crl_verify is not None:  # a bad CRL is a one-line error at start, not later
        if cfg.crl_verify_path is None:
            check_crl(cfg.crl_verify, cfg.ca)
        else:
            crl_file = CRLFile(cfg.crl_verify_path, cfg.crl_verify, cfg.ca)
    options = {
        proto: occ_options_string(
            proto=wire, tls_client=False, tls_auth=cfg.tls_auth is not None,
            key_direction=cfg.key_direction if cfg.tls_auth else None, tun_mtu=cfg.tun_mtu or 1500,
        )
        for proto, wire in (("udp", "udp"), ("tcp", "tcp-server"))
    }
    overhead = v2.overhead if v2 is not None else factory(1).overhead
    from trivpn.server.admission import ServerScripts  # admission imports this module

    return SessionParts(cfg, factory, overhead, wrap_key, tls_config, options, crl_file, v2, ServerScripts(cfg))
