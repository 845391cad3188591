"""`trivpn pki init | client | revoke` (plugged into trivpn.cli; only argparse at import)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("trivpn")

EPILOG = """\
examples:
  trivpn pki init ./vpn-pki --name vpn.example.net
  trivpn pki init ./vpn-pki --name 203.0.113.7 --tls-crypt-v2 --subnet 10.9.0.0/24
  trivpn pki client ./vpn-pki alice                 # writes ./vpn-pki/clients/alice.ovpn
  trivpn pki client ./vpn-pki bob --remote vpn.example.net:443
  trivpn pki revoke ./vpn-pki alice                 # the server refuses alice from now on
  sudo trivpn serve ./vpn-pki/server.conf
"""


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: object) -> None:
    p = sub.add_parser(
        "pki",
        help="make a CA, server and client certificates, and ready configs (no easy-rsa)",
        description="A small PKI for one OpenVPN/trivpn server: the CA key never leaves DIR.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    psub = p.add_subparsers(dest="pki_command", metavar="ACTION", parser_class=type(p))
    psub.required = True

    i = psub.add_parser(
        "init",
        help="create DIR with a CA, server certificate, tls-crypt key, CRL and server.conf",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    i.add_argument("dir", metavar="DIR", help="new (or empty) directory for the PKI")
    i.add_argument(
        "--name", default="vpn.example.net",
        help="the server's DNS name or address: its certificate's name, the clients' "
        "default remote (default vpn.example.net)",
    )
    i.add_argument("--tls-crypt-v2", action="store_true", help="a per-client tls-crypt-v2 key instead of one shared tls-crypt key")
    i.add_argument("--subnet", default="10.8.0.0/24", help="the tunnel's IPv4 network, /16 to /29 (default 10.8.0.0/24)")
    i.add_argument("--port", type=int, default=1194, help="server port (default 1194)")
    i.add_argument("--proto", choices=("udp", "tcp"), default="udp", help="transport (default udp)")
    i.add_argument("--curve", choices=("P-256", "P-384"), default="P-256", help="EC curve for every key (default P-256)")
    i.set_defaults(handler=cmd_init)

    c = psub.add_parser(
        "client",
        help="issue a certificate for NAME and write DIR/clients/NAME.ovpn (inline, one file)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("dir", metavar="DIR", help="the PKI directory made by 'trivpn pki init'")
    c.add_argument("name", metavar="NAME", help="the client's name (its certificate's common name)")
    c.add_argument("--remote", metavar="HOST[:PORT]", help="where clients connect (default: init's --name and --port)")
    c.set_defaults(handler=cmd_client)

    r = psub.add_parser(
        "revoke",
        help="revoke NAME's certificate: crl.pem is rewritten and the server refuses NAME",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("dir", metavar="DIR", help="the PKI directory")
    r.add_argument("name", metavar="NAME", help="the client to revoke")
    r.set_defaults(handler=cmd_revoke)


def root_command() -> str:
    """How to run this very trivpn as root. `sudo` searches its own fixed PATH, never a
    virtual environment's bin/, so plain `sudo trivpn` fails after the README's venv
    install: the hint names the script's full path (or the interpreter's, for -m)."""
    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if os.path.basename(script) == "trivpn" and os.path.isfile(script):
        return script
    return f"{sys.executable} -m trivpn"


async def cmd_init(args: argparse.Namespace) -> int:
    import trio

    from trivpn.pki import ops, store

    root = Path(args.dir)
    settings = await trio.to_thread.run_sync(
        lambda: ops.init(
            root, name=args.name, tls_crypt_v2=args.tls_crypt_v2, subnet=args.subnet,
            port=args.port, proto=args.proto, curve=args.curve,
        )
    )
    wrap = store.V2_SERVER_KEY if settings.tls_crypt_v2 else store.TLS_CRYPT_KEY
    print(f"PKI for {settings.name} in {root} ({settings.curve} keys; {wrap})")
    print(f"  server config: {root / store.SERVER_CONF}")
    print(f"  next: trivpn pki client {root} NAME      then: sudo {root_command()} serve {root / store.SERVER_CONF}")
    return 0


async def cmd_client(args: argparse.Namespace) -> int:
    import trio

    from trivpn.pki import ops

    issued = await trio.to_thread.run_sync(lambda: ops.client(Path(args.dir), args.name, remote=args.remote))
    print(f"{issued.profile}  (certificate serial {issued.serial:x}; it holds the client's key: hand it over privately)")
    return 0


async def cmd_revoke(args: argparse.Namespace) -> int:
    import trio

    from trivpn.pki import ops, store

    serials = await trio.to_thread.run_sync(lambda: ops.revoke(Path(args.dir), args.name))
    listed = ", ".join(f"{s:x}" for s in serials)
    print(f"revoked {args.name} (serial {listed}); {Path(args.dir) / store.CRL} rewritten")
    print("a running server takes the new CRL at the next connection; a connected client of that"
          " name is refused at its next renegotiation (reneg-sec) or reconnect")
    return 0
