"""Watching a running instance: management interface glue, status, metrics.

Deliberately empty: `trivpn connect` imports only `trivpn.observe.hooks` (a Protocol) unless
management, a status file or metrics are configured, so its start time and memory do not
grow for what it does not use.
"""
