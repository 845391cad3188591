"""`trivpn serve`: the server's pure cores (demultiplexing, configuration, pool, routing)."""
