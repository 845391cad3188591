"""session: one session's configuration, layer stack and reconnect policy, for both roles."""
