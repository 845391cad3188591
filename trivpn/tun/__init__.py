"""tun: TUN devices (kernel via pyroute2, userspace via channels) and IP helpers."""
