"""tun: TUN devices (kernel via rtnetlink, userspace via channels) and IP helpers."""
