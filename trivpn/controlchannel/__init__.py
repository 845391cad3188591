"""controlchannel: control packet codec, tls-auth/tls-crypt wrapping and the control-channel service."""
