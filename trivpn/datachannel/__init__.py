"""datachannel: data-channel crypto (AEAD), replay protection, keepalive and its service."""
