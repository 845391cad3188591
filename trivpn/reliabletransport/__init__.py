"""reliabletransport: OpenVPN's reliability layer for control packets (sans-IO core + service)."""
