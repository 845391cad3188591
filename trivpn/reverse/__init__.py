"""Reverse TCP tunnel: `trivpn relay` (public side) and `trivpn expose` (behind NAT).

A client behind NAT keeps one connection to a public relay; the relay listens on a public
port for it and carries every public TCP connection to the client as a *stream* multiplexed
over that one connection. See docs/reverse-tunnel.md for the protocol and its rules.

Layout, sans-IO first:

* `frames` — the versioned frame codec (pure);
* `session` — the session and stream state machines with credit flow control (pure);
* `ports` — relay port leases and the reconnect backoff policy (pure);
* `httplog` — passive HTTP/1.1 request/response observer on a side copy (pure, h11);
* `metrics` — counters, the summary text and the Prometheus export;
* `service` — the thin trio services: the session runner and the stream bridge;
* `relay`, `expose` — the two programs; `cli` — their command-line parsers.
"""
