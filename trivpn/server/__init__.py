"""The server role (`trivpn serve`): pure cores for the address pool, the internal
multiplexer (routing), configuration and demultiplexing, and the services around them."""
