"""`sudo trivpn demo`: PKI, server and client in two network namespaces, a ping and an
iperf3 through the tunnel, then everything removed (run.py)."""
