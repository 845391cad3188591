"""`trivpn pki`: a CA, server and client certificates and ready OpenVPN configs, without
easy-rsa (see docs/cli.md and ops.py)."""
