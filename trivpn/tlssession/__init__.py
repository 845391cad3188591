"""tlssession: TLS over the control channel, key method 2, PUSH and data-key derivation."""
