"""profile: .ovpn profile parsing and PUSH_REPLY parsing."""
