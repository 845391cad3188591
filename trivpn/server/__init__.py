"""The server role (`trivpn serve`, issue 12): pure cores for the configuration, the UDP
demultiplexer (stateless HMAC-cookie reset, peer-ids, float), the address pool and the
internal multiplexer (routing). No trio service runs them yet."""
