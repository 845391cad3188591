"""Name-based routing and the request inspector of the reverse tunnel.

Pure cores: `names` (name leases), `hostrouter` (the first request head of a public HTTP
connection, routed by its Host header), `sni` (a TLS ClientHello's server_name, read
without terminating TLS), `capture` and `inspector` (the inspector's history and its
HTTP API). Thin trio services: `router` (the relay's --http-addr / --https-addr
listeners) and `inspectsrv` (expose's --inspect page).
"""
