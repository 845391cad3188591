import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RPC(_message.Message):
    __slots__ = ("msg_id", "response_to")
    MSG_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TO_FIELD_NUMBER: _ClassVar[int]
    msg_id: int
    response_to: int
    def __init__(self, msg_id: _Optional[int] = ..., response_to: _Optional[int] = ...) -> None: ...

class ManagerMessage(_message.Message):
    __slots__ = ("rpc", "get_peer_update", "network_settings", "start", "stop")
    RPC_FIELD_NUMBER: _ClassVar[int]
    GET_PEER_UPDATE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    rpc: RPC
    get_peer_update: GetPeerUpdate
    network_settings: NetworkSettingsResponse
    start: StartRequest
    stop: StopRequest
    def __init__(self, rpc: _Optional[_Union[RPC, _Mapping]] = ..., get_peer_update: _Optional[_Union[GetPeerUpdate, _Mapping]] = ..., network_settings: _Optional[_Union[NetworkSettingsResponse, _Mapping]] = ..., start: _Optional[_Union[StartRequest, _Mapping]] = ..., stop: _Optional[_Union[StopRequest, _Mapping]] = ...) -> None: ...

class TunnelMessage(_message.Message):
    __slots__ = ("rpc", "log", "peer_update", "network_settings", "start", "stop")
    RPC_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    PEER_UPDATE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    rpc: RPC
    log: Log
    peer_update: PeerUpdate
    network_settings: NetworkSettingsRequest
    start: StartResponse
    stop: StopResponse
    def __init__(self, rpc: _Optional[_Union[RPC, _Mapping]] = ..., log: _Optional[_Union[Log, _Mapping]] = ..., peer_update: _Optional[_Union[PeerUpdate, _Mapping]] = ..., network_settings: _Optional[_Union[NetworkSettingsRequest, _Mapping]] = ..., start: _Optional[_Union[StartResponse, _Mapping]] = ..., stop: _Optional[_Union[StopResponse, _Mapping]] = ...) -> None: ...

class Log(_message.Message):
    __slots__ = ("level", "message", "logger_names", "fields")
    class Level(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        DEBUG: _ClassVar[Log.Level]
        INFO: _ClassVar[Log.Level]
        WARN: _ClassVar[Log.Level]
        ERROR: _ClassVar[Log.Level]
        CRITICAL: _ClassVar[Log.Level]
        FATAL: _ClassVar[Log.Level]
    DEBUG: Log.Level
    INFO: Log.Level
    WARN: Log.Level
    ERROR: Log.Level
    CRITICAL: Log.Level
    FATAL: Log.Level
    class Field(_message.Message):
        __slots__ = ("name", "value")
        NAME_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        name: str
        value: str
        def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LOGGER_NAMES_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    level: Log.Level
    message: str
    logger_names: _containers.RepeatedScalarFieldContainer[str]
    fields: _containers.RepeatedCompositeFieldContainer[Log.Field]
    def __init__(self, level: _Optional[_Union[Log.Level, str]] = ..., message: _Optional[str] = ..., logger_names: _Optional[_Iterable[str]] = ..., fields: _Optional[_Iterable[_Union[Log.Field, _Mapping]]] = ...) -> None: ...

class GetPeerUpdate(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Peer(_message.Message):
    __slots__ = ("name", "state", "remote", "ip_addrs", "last_handshake", "tx_bytes", "rx_bytes", "cipher", "key_derivation", "error_message")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[Peer.State]
        CONNECTING: _ClassVar[Peer.State]
        CONNECTED: _ClassVar[Peer.State]
        DISCONNECTING: _ClassVar[Peer.State]
        DISCONNECTED: _ClassVar[Peer.State]
        FAILED: _ClassVar[Peer.State]
    UNKNOWN: Peer.State
    CONNECTING: Peer.State
    CONNECTED: Peer.State
    DISCONNECTING: Peer.State
    DISCONNECTED: Peer.State
    FAILED: Peer.State
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REMOTE_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRS_FIELD_NUMBER: _ClassVar[int]
    LAST_HANDSHAKE_FIELD_NUMBER: _ClassVar[int]
    TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    CIPHER_FIELD_NUMBER: _ClassVar[int]
    KEY_DERIVATION_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: Peer.State
    remote: str
    ip_addrs: _containers.RepeatedScalarFieldContainer[str]
    last_handshake: _timestamp_pb2.Timestamp
    tx_bytes: int
    rx_bytes: int
    cipher: str
    key_derivation: str
    error_message: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[Peer.State, str]] = ..., remote: _Optional[str] = ..., ip_addrs: _Optional[_Iterable[str]] = ..., last_handshake: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tx_bytes: _Optional[int] = ..., rx_bytes: _Optional[int] = ..., cipher: _Optional[str] = ..., key_derivation: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class PeerUpdate(_message.Message):
    __slots__ = ("upserted_peers", "deleted_peers")
    UPSERTED_PEERS_FIELD_NUMBER: _ClassVar[int]
    DELETED_PEERS_FIELD_NUMBER: _ClassVar[int]
    upserted_peers: _containers.RepeatedCompositeFieldContainer[Peer]
    deleted_peers: _containers.RepeatedCompositeFieldContainer[Peer]
    def __init__(self, upserted_peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ..., deleted_peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ...) -> None: ...

class NetworkSettingsRequest(_message.Message):
    __slots__ = ("tunnel_overhead_bytes", "mtu", "dns_settings", "tunnel_remote_address", "ipv4_settings", "ipv6_settings")
    class DNSSettings(_message.Message):
        __slots__ = ("servers", "search_domains", "domain_name", "match_domains", "match_domains_no_search")
        SERVERS_FIELD_NUMBER: _ClassVar[int]
        SEARCH_DOMAINS_FIELD_NUMBER: _ClassVar[int]
        DOMAIN_NAME_FIELD_NUMBER: _ClassVar[int]
        MATCH_DOMAINS_FIELD_NUMBER: _ClassVar[int]
        MATCH_DOMAINS_NO_SEARCH_FIELD_NUMBER: _ClassVar[int]
        servers: _containers.RepeatedScalarFieldContainer[str]
        search_domains: _containers.RepeatedScalarFieldContainer[str]
        domain_name: str
        match_domains: _containers.RepeatedScalarFieldContainer[str]
        match_domains_no_search: bool
        def __init__(self, servers: _Optional[_Iterable[str]] = ..., search_domains: _Optional[_Iterable[str]] = ..., domain_name: _Optional[str] = ..., match_domains: _Optional[_Iterable[str]] = ..., match_domains_no_search: _Optional[bool] = ...) -> None: ...
    class IPv4Settings(_message.Message):
        __slots__ = ("addrs", "subnet_masks", "router", "included_routes", "excluded_routes")
        class IPv4Route(_message.Message):
            __slots__ = ("destination", "mask", "router")
            DESTINATION_FIELD_NUMBER: _ClassVar[int]
            MASK_FIELD_NUMBER: _ClassVar[int]
            ROUTER_FIELD_NUMBER: _ClassVar[int]
            destination: str
            mask: str
            router: str
            def __init__(self, destination: _Optional[str] = ..., mask: _Optional[str] = ..., router: _Optional[str] = ...) -> None: ...
        ADDRS_FIELD_NUMBER: _ClassVar[int]
        SUBNET_MASKS_FIELD_NUMBER: _ClassVar[int]
        ROUTER_FIELD_NUMBER: _ClassVar[int]
        INCLUDED_ROUTES_FIELD_NUMBER: _ClassVar[int]
        EXCLUDED_ROUTES_FIELD_NUMBER: _ClassVar[int]
        addrs: _containers.RepeatedScalarFieldContainer[str]
        subnet_masks: _containers.RepeatedScalarFieldContainer[str]
        router: str
        included_routes: _containers.RepeatedCompositeFieldContainer[NetworkSettingsRequest.IPv4Settings.IPv4Route]
        excluded_routes: _containers.RepeatedCompositeFieldContainer[NetworkSettingsRequest.IPv4Settings.IPv4Route]
        def __init__(self, addrs: _Optional[_Iterable[str]] = ..., subnet_masks: _Optional[_Iterable[str]] = ..., router: _Optional[str] = ..., included_routes: _Optional[_Iterable[_Union[NetworkSettingsRequest.IPv4Settings.IPv4Route, _Mapping]]] = ..., excluded_routes: _Optional[_Iterable[_Union[NetworkSettingsRequest.IPv4Settings.IPv4Route, _Mapping]]] = ...) -> None: ...
    class IPv6Settings(_message.Message):
        __slots__ = ("addrs", "prefix_lengths", "included_routes", "excluded_routes")
        class IPv6Route(_message.Message):
            __slots__ = ("destination", "prefix_length", "router")
            DESTINATION_FIELD_NUMBER: _ClassVar[int]
            PREFIX_LENGTH_FIELD_NUMBER: _ClassVar[int]
            ROUTER_FIELD_NUMBER: _ClassVar[int]
            destination: str
            prefix_length: int
            router: str
            def __init__(self, destination: _Optional[str] = ..., prefix_length: _Optional[int] = ..., router: _Optional[str] = ...) -> None: ...
        ADDRS_FIELD_NUMBER: _ClassVar[int]
        PREFIX_LENGTHS_FIELD_NUMBER: _ClassVar[int]
        INCLUDED_ROUTES_FIELD_NUMBER: _ClassVar[int]
        EXCLUDED_ROUTES_FIELD_NUMBER: _ClassVar[int]
        addrs: _containers.RepeatedScalarFieldContainer[str]
        prefix_lengths: _containers.RepeatedScalarFieldContainer[int]
        included_routes: _containers.RepeatedCompositeFieldContainer[NetworkSettingsRequest.IPv6Settings.IPv6Route]
        excluded_routes: _containers.RepeatedCompositeFieldContainer[NetworkSettingsRequest.IPv6Settings.IPv6Route]
        def __init__(self, addrs: _Optional[_Iterable[str]] = ..., prefix_lengths: _Optional[_Iterable[int]] = ..., included_routes: _Optional[_Iterable[_Union[NetworkSettingsRequest.IPv6Settings.IPv6Route, _Mapping]]] = ..., excluded_routes: _Optional[_Iterable[_Union[NetworkSettingsRequest.IPv6Settings.IPv6Route, _Mapping]]] = ...) -> None: ...
    TUNNEL_OVERHEAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    DNS_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    TUNNEL_REMOTE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    IPV4_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    IPV6_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    tunnel_overhead_bytes: int
    mtu: int
    dns_settings: NetworkSettingsRequest.DNSSettings
    tunnel_remote_address: str
    ipv4_settings: NetworkSettingsRequest.IPv4Settings
    ipv6_settings: NetworkSettingsRequest.IPv6Settings
    def __init__(self, tunnel_overhead_bytes: _Optional[int] = ..., mtu: _Optional[int] = ..., dns_settings: _Optional[_Union[NetworkSettingsRequest.DNSSettings, _Mapping]] = ..., tunnel_remote_address: _Optional[str] = ..., ipv4_settings: _Optional[_Union[NetworkSettingsRequest.IPv4Settings, _Mapping]] = ..., ipv6_settings: _Optional[_Union[NetworkSettingsRequest.IPv6Settings, _Mapping]] = ...) -> None: ...

class NetworkSettingsResponse(_message.Message):
    __slots__ = ("success", "error_message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    error_message: str
    def __init__(self, success: _Optional[bool] = ..., error_message: _Optional[str] = ...) -> None: ...

class StartRequest(_message.Message):
    __slots__ = ("tunnel_file_descriptor", "profile_text", "profile_path", "username", "password", "key_derivation", "tunnel_name")
    TUNNEL_FILE_DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    PROFILE_TEXT_FIELD_NUMBER: _ClassVar[int]
    PROFILE_PATH_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    KEY_DERIVATION_FIELD_NUMBER: _ClassVar[int]
    TUNNEL_NAME_FIELD_NUMBER: _ClassVar[int]
    tunnel_file_descriptor: int
    profile_text: str
    profile_path: str
    username: str
    password: str
    key_derivation: str
    tunnel_name: str
    def __init__(self, tunnel_file_descriptor: _Optional[int] = ..., profile_text: _Optional[str] = ..., profile_path: _Optional[str] = ..., username: _Optional[str] = ..., password: _Optional[str] = ..., key_derivation: _Optional[str] = ..., tunnel_name: _Optional[str] = ...) -> None: ...

class StartResponse(_message.Message):
    __slots__ = ("success", "error_message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    error_message: str
    def __init__(self, success: _Optional[bool] = ..., error_message: _Optional[str] = ...) -> None: ...

class StopRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StopResponse(_message.Message):
    __slots__ = ("success", "error_message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    error_message: str
    def __init__(self, success: _Optional[bool] = ..., error_message: _Optional[str] = ...) -> None: ...
