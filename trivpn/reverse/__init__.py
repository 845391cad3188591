"""Reverse TCP tunnel: `trivpn relay` (public side) and `trivpn expose` (behind NAT).

A client behind NAT keeps one connection to a public relay; the relay listens on a public
port for it and carries every public TCP connection to the client as a *stream* multiplexed
over that one connection. See docs/reverse-tunnel.md for the protocol and its rules.

Layout, sans-IO first:

* `frames` — the versioned frame codec (pure);
* `session` — the `Session` facade over the pure pieces of one tunnel end:
  `handshake` (INIT → BOUND, authentication), `streams` (per-stream state, credit,
  FIN/RST), `scheduler` (control ahead of round-robin data; the session-wide receive
  budget), `heartbeat` (pings, expiry), `events` (typed events), `config` (tunables);
* `ports` — relay port leases and the reconnect backoff policy (pure);
* `httplog` — passive HTTP/1.1 request/response observer on a side copy (pure, h11);
* `metrics` — counters, the summary text and the Prometheus export;
* the thin trio side: `sockets` (non-blocking socket helpers), `connection` (one
  `Connection` for plain TCP and TLS), `pipe` (`StreamPipe`: one stream <-> one socket),
  `service` (`SessionRunner`: runs a session over a connection);
* `relay`, `expose` — the two programs; `cli` — their command-line parsers.
"""
