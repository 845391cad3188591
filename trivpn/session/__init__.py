"""One OpenVPN session stack, for the client and the server role.

`config` turns a profile plus command-line/API overrides into one frozen `SessionConfig`
(validated once, before anything connects); `reconnect` is the pure policy that decides
which remote comes next and how long to wait; `netsettings` translates pushed options into
what the TUN layer applies; `stack` builds one session's channels and services for either
role (its docstring is the channel map). The client role's pieces: `transport` opens the
socket of one attempt (proxy, resolve, bind), `clientstack` plugs it and the TUN into a
client-role stack, `netapply` applies the pushed settings to a kernel TUN.
"""
