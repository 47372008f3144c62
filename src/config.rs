//! Node configuration: every option explicit, with units in its name and an
//! embedded default.
//!
//! Precedence, lowest first: embedded defaults, the TOML file (`--config`),
//! `CORECAST_*` environment variables, command-line flags.
//!
//! [`KEYS`] is the one table of every key (section, name, comment, older
//! variable names): the unknown-key check, the environment variables
//! (`CORECAST_<SECTION>_<KEY>`, plus each key's aliases), `corecast config
//! default` and the variable list in docs/contract.md are all driven by it,
//! and each key's default is the one of [`Config::default`]. The variable
//! names are a contract that scripts, tests and the ansible role drive nodes
//! with: keep them stable.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limits;

/// Shortest accepted `cluster.mesh_key`, in bytes (the shared secret the
/// mesh's CURVE key pair is derived from; see `crate::mesh::curve`).
pub const MESH_KEY_BYTES_MIN: usize = 32;

/// A configuration that cannot be loaded or does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("invalid value for {name}: {message}")]
    Invalid { name: String, message: String },
    /// A key (or section) the table [`KEYS`] does not know.
    #[error("unknown key {key}")]
    UnknownKey { key: String },
    /// A value of the wrong TOML type (or out of its type's range).
    #[error("wrong type for {key}: {message}")]
    WrongType { key: String, message: String },
    /// An environment variable whose value does not parse for its key.
    #[error("invalid value for {var} ({key}): {message}")]
    Env {
        var: String,
        key: String,
        message: String,
    },
    #[error(
        "cluster.mesh_key (CORECAST_MESH_KEY) is {len} bytes: a mesh key must be at least \
         {min} bytes (e.g. `openssl rand -base64 48`)",
        min = MESH_KEY_BYTES_MIN
    )]
    MeshKeyTooShort { len: usize },
    /// `[ws] echo` turns tokens off: it is refused on any listener a remote
    /// host could reach.
    #[error(
        "ws.echo (CORECAST_WS_ECHO) is a conformance-test mode with no token check: \
         ws.listen must be a loopback address, not {listen}"
    )]
    EchoOffLoopback { listen: SocketAddr },
    /// More than one of the above, every one with its key.
    #[error("{} errors:\n  {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n  "))]
    Several(Vec<ConfigError>),
}

impl ConfigError {
    /// The key (`section.name`, or a section) the error is about; `None` for
    /// a file that cannot be read or is not TOML, and for [`Self::Several`].
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Read { .. } | Self::Parse { .. } | Self::Several(_) => None,
            Self::Invalid { name, .. } => Some(name),
            Self::UnknownKey { key } | Self::WrongType { key, .. } | Self::Env { key, .. } => {
                Some(key)
            }
            Self::MeshKeyTooShort { .. } => Some("cluster.mesh_key"),
            Self::EchoOffLoopback { .. } => Some("ws.echo"),
        }
    }

    /// One error for a list of them: `None` when empty, the error itself
    /// when alone, [`Self::Several`] otherwise.
    pub fn from_list(mut errors: Vec<ConfigError>) -> Option<Self> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(Self::Several(errors)),
        }
    }

    /// The errors this one stands for (itself, or each of [`Self::Several`]).
    pub fn into_list(self) -> Vec<ConfigError> {
        match self {
            Self::Several(errors) => errors,
            other => vec![other],
        }
    }
}

fn invalid(name: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_string(),
        message: message.into(),
    }
}

/// Default of `[auth] token_ttl_max_ms`: 7 days. Long enough for every
/// lifetime the docs and `corecast token --ttl` show (1 h default, `7d` the
/// largest example), short enough that a token with `exp` far in the future
/// (or `u64::MAX`, never expiring) is refused.
pub const TOKEN_TTL_MAX_DEFAULT_MS: u64 = 7 * 24 * 3600 * 1000;

/// The whole node configuration, as read from TOML.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub ws: WsConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub heartbeat: HeartbeatConfig,
    pub cluster: ClusterConfig,
    pub shutdown: ShutdownConfig,
    pub history: HistoryConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Executor count; 0 means one per online core.
    pub cores: usize,
    /// First CPU to pin executor 0 to; executor i is pinned to `first_cpu + i`
    /// (modulo the online CPUs).
    pub first_cpu: usize,
    /// glommio `io_memory` per executor, in KiB (io_uring registered buffers).
    pub io_memory_kib: usize,
    /// io_uring submission queue entries per ring. The kernel sizes its
    /// cancel hash table from the ring (8 buckets at glommio's default 128,
    /// 256 from 4096 up), and every executor wake-up cancels a request by
    /// scanning one bucket, which holds a share of every idle connection's
    /// pending poll: a deep ring keeps that scan short.
    pub ring_depth: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            cores: 0,
            first_cpu: 0,
            io_memory_kib: 512,
            ring_depth: 4096,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// WebSocket listen address (every executor binds it with SO_REUSEPORT).
    pub listen: SocketAddr,
    /// `listen(2)` backlog of each executor's WebSocket socket.
    pub backlog: u32,
    /// Accept `join` for any room, not only the rooms of the token's claim.
    pub free_join: bool,
    /// Origins (`scheme://host[:port]`, compared without case) allowed to
    /// upgrade. Empty: any origin, and requests without `Origin` (non-browser
    /// clients) are always allowed.
    pub allowed_origins: Vec<String>,
    /// Conformance mode, never for production: every data message is echoed
    /// back and no token is asked for (each connection gets a uid of its
    /// own). Refused unless `listen` is a loopback address.
    pub echo: bool,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            backlog: 4096,
            free_join: false,
            allowed_origins: Vec::new(),
            echo: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Push API listen address (every executor binds it with SO_REUSEPORT).
    pub listen: SocketAddr,
    /// `listen(2)` backlog of each executor's HTTP socket.
    pub backlog: u32,
    /// Time a client has to send a whole request head, counted from the
    /// connection's accept or from the first byte of the next request.
    /// Keep-alive idle between requests is `limits.http_idle_timeout_ms`.
    pub header_timeout_ms: u64,
    /// Requests served on one connection; the last one is answered with
    /// `Connection: close`.
    pub requests_per_connection_max: u32,
    /// Age of a connection after which it is closed once its request in
    /// flight (if any) is answered.
    pub connection_age_max_ms: u64,
    /// HTTP connections one source address may hold on one executor; past
    /// it the connection is answered 503 with `Retry-After` and closed.
    pub connections_per_address_per_core_max: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            backlog: 1024,
            header_timeout_ms: 10_000,
            requests_per_connection_max: 10_000,
            connection_age_max_ms: 600_000,
            connections_per_address_per_core_max: 256,
        }
    }
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret for client tokens. Empty: a random dev secret is made at
    /// start and printed once.
    pub jwt_secret: String,
    /// API keys accepted on `/v1/*`. Empty: a random dev key is made at start.
    pub api_keys: Vec<String>,
    /// Longest remaining lifetime (`exp - now`) a client token may have at
    /// the upgrade; a token past it is refused (401 `token_bad_claims`).
    pub token_ttl_max_ms: u64,
    /// Set at start-up, never read from a file: `jwt_secret` was empty and
    /// is a random one made for this run (dev mode: the banner prints it and
    /// `GET /` on the WebSocket port serves the demo page).
    #[serde(skip)]
    pub jwt_secret_generated: bool,
    /// Set at start-up, never read from a file: `api_keys` was empty and
    /// holds one random key made for this run (printed, and shown by the
    /// demo page).
    #[serde(skip)]
    pub api_key_generated: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: String::new(),
            api_keys: Vec::new(),
            token_ttl_max_ms: TOKEN_TTL_MAX_DEFAULT_MS,
            jwt_secret_generated: false,
            api_key_generated: false,
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &"<redacted>")
            .field(
                "api_keys",
                &format_args!("<{} redacted>", self.api_keys.len()),
            )
            .field("token_ttl_max_ms", &self.token_ttl_max_ms)
            .field("jwt_secret_generated", &self.jwt_secret_generated)
            .field("api_key_generated", &self.api_key_generated)
            .finish()
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Concurrent WebSocket connections per node; past it handshakes get 503.
    pub max_connections: usize,
    /// Concurrent connections of one user; the oldest is closed with 4001.
    pub max_channels_per_user: usize,
    /// Rooms one user may be in at once.
    pub max_rooms_per_user: usize,
    /// Bytes of the HTTP upgrade request, request line and headers.
    pub handshake_header_bytes_max: usize,
    /// Time a client has to finish the upgrade request.
    pub handshake_timeout_ms: u64,
    /// Time a client has to send the request line (`GET /ws?...`), inside
    /// `handshake_timeout_ms` (the smaller of the two applies): a
    /// connection that says nothing is let go early.
    pub handshake_request_line_timeout_ms: u64,
    /// Handshakes in progress from one source address, node-wide (each
    /// core takes its share); past it the connection is answered 503 with
    /// `Retry-After` at once.
    pub handshakes_per_address_max: usize,
    /// Largest client frame or message (close 1009 past it).
    pub client_message_bytes_max: usize,
    /// Client messages per second before the client gets an error frame; at
    /// twice this rate it is closed with 1008.
    pub client_messages_per_sec_max: u32,
    /// Largest push body accepted on the HTTP API (413 past it).
    pub push_body_bytes_max: usize,
    /// Frames waiting in one connection's outbound queue (close 1013 past it).
    pub send_queue_frames_max: usize,
    /// Bytes waiting in one connection's outbound queue (close 1013 past it).
    pub send_queue_bytes_max: usize,
    /// Bytes of pushes in flight from one core to another (one way); a
    /// push that finds the link to a core it needs full is answered 503.
    pub core_link_bytes_max: usize,
    /// Concurrent HTTP connections per executor on the push API.
    pub http_connections_per_core_max: usize,
    /// An HTTP connection that starts no request for this long is closed
    /// (slow or idle clients cannot pin the push API's connection slots).
    /// Counted from the connection's last byte, in or out; a request in
    /// flight is never cut by it.
    pub http_idle_timeout_ms: u64,
    /// Push requests per second one API key may make on this node (token
    /// bucket, burst of one second); past it 429 with `Retry-After`. Split
    /// evenly over the executors. 0: no per-key budget.
    pub key_pushes_per_sec_max: u32,
    /// Push requests per second this node accepts from all keys together;
    /// split evenly over the executors. 0: no node budget.
    pub node_pushes_per_sec_max: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 1_000_000,
            max_channels_per_user: 10,
            max_rooms_per_user: 64,
            handshake_header_bytes_max: 8 * 1024,
            handshake_timeout_ms: 5_000,
            handshake_request_line_timeout_ms: 1_000,
            handshakes_per_address_max: 256,
            client_message_bytes_max: 4 * 1024,
            client_messages_per_sec_max: 20,
            push_body_bytes_max: 64 * 1024,
            send_queue_frames_max: 4096,
            send_queue_bytes_max: 1024 * 1024,
            core_link_bytes_max: 32 * 1024 * 1024,
            http_connections_per_core_max: 1024,
            http_idle_timeout_ms: 60_000,
            key_pushes_per_sec_max: 50_000,
            node_pushes_per_sec_max: 100_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// The server pings each connection this often.
    pub ping_interval_ms: u64,
    /// A connection silent this long is closed (1001 "idle timeout").
    pub idle_timeout_ms: u64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            ping_interval_ms: 25_000,
            idle_timeout_ms: 60_000,
        }
    }
}

#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name in the cluster; empty: derived from the host name and
    /// the WebSocket port.
    pub node_id: String,
    /// ZeroMQ PUB bind address (`tcp://host:port`); empty: no mesh.
    pub mesh_listen: String,
    /// Every peer's PUB address. A node may list itself: it is ignored.
    pub mesh_peers: Vec<String>,
    /// Shared secret of the cluster (at least
    /// [`MESH_KEY_BYTES_MIN`] bytes): every mesh connection is
    /// CURVE-encrypted and admitted only with the key pair derived from it.
    /// Empty: no key, and the mesh may only use loopback addresses.
    pub mesh_key: String,
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("node_id", &self.node_id)
            .field("mesh_listen", &self.mesh_listen)
            .field("mesh_peers", &self.mesh_peers)
            .field(
                "mesh_key",
                &if self.mesh_key.is_empty() {
                    "<unset>"
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// On SIGTERM/SIGINT, connections are closed with 1001 spread over this.
    pub drain_period_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_period_ms: 10_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Pushes are kept this long for resume (DESIGN section 3.1).
    pub ttl_ms: u64,
    /// Bytes of retained pushes on this node, split evenly over its cores;
    /// oldest dropped first, and a push that would not fit among unexpired
    /// ones is answered 503.
    pub bytes_max: usize,
    /// An `Idempotency-Key` is remembered this long.
    pub idempotency_ttl_ms: u64,
    /// Idempotency keys remembered on this node (503 past it).
    pub idempotency_keys_max: usize,
    /// Server-side room memberships stored on this node (refused past it).
    pub memberships_max: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            ttl_ms: 120_000,
            bytes_max: 256 * 1024 * 1024,
            idempotency_ttl_ms: 300_000,
            idempotency_keys_max: 1_000_000,
            memberships_max: 1_000_000,
        }
    }
}

/// One configuration key: where it lives, what it sets, and the older
/// environment variable names that keep working for it.
#[derive(Debug)]
pub struct Key {
    /// The TOML table (`[limits]`).
    pub section: &'static str,
    /// The key inside it (`send_queue_bytes_max`).
    pub name: &'static str,
    /// Variable names from before `CORECAST_<SECTION>_<KEY>`: a contract
    /// (scripts and tests use them). Applied before the canonical name, so
    /// the canonical one wins when both are set.
    pub aliases: &'static [&'static str],
    /// One line for `corecast config default` and docs/contract.md.
    pub comment: &'static str,
}

impl Key {
    /// `section.name`, as errors name the key.
    pub fn path(&self) -> String {
        format!("{}.{}", self.section, self.name)
    }

    /// `CORECAST_<SECTION>_<KEY>`, upper case.
    pub fn env_var(&self) -> String {
        format!("CORECAST_{}_{}", self.section, self.name).to_ascii_uppercase()
    }

    /// Every variable that sets this key, aliases first (the last one set
    /// wins), the canonical name last.
    pub fn env_vars(&self) -> impl Iterator<Item = String> + '_ {
        self.aliases
            .iter()
            .map(|a| a.to_string())
            .chain(std::iter::once(self.env_var()))
    }

    /// The key's entry in [`KEYS`].
    pub fn find(section: &str, name: &str) -> Option<&'static Key> {
        KEYS.iter().find(|k| k.section == section && k.name == name)
    }
}

const fn key(
    section: &'static str,
    name: &'static str,
    aliases: &'static [&'static str],
    comment: &'static str,
) -> Key {
    Key {
        section,
        name,
        aliases,
        comment,
    }
}

/// The sections of the file, in the order `config default` prints them.
pub const SECTIONS: &[&str] = &[
    "node",
    "ws",
    "http",
    "auth",
    "limits",
    "heartbeat",
    "cluster",
    "shutdown",
    "history",
];

/// Every configuration key (the defaults are [`Config::default`]'s; a unit
/// test checks that this table and the structs hold the same keys).
pub const KEYS: &[Key] = &[
    key(
        "node",
        "cores",
        &["CORECAST_CORES"],
        "Executor count, one per core; 0 = one per online core.",
    ),
    key(
        "node",
        "first_cpu",
        &[],
        "First CPU to pin executor 0 to; executor i runs on first_cpu + i.",
    ),
    key(
        "node",
        "io_memory_kib",
        &[],
        "glommio io_memory per executor, KiB (io_uring registered buffers).",
    ),
    key(
        "node",
        "ring_depth",
        &[],
        "io_uring submission queue entries per ring.",
    ),
    key(
        "ws",
        "listen",
        &[],
        "WebSocket listen address (every executor binds it with SO_REUSEPORT).",
    ),
    key(
        "ws",
        "backlog",
        &[],
        "listen(2) backlog of each executor's WebSocket socket.",
    ),
    key(
        "ws",
        "free_join",
        &["CORECAST_FREE_JOIN"],
        "Accept join for any room, not only the rooms of the token's claim.",
    ),
    key(
        "ws",
        "allowed_origins",
        &[],
        "Origins (scheme://host[:port]) allowed to upgrade; empty = any (no Origin always passes).",
    ),
    key(
        "ws",
        "echo",
        &[],
        "Conformance-test mode, never in production: echo data, no token; loopback listen only.",
    ),
    key(
        "http",
        "listen",
        &[],
        "Push API listen address (every executor binds it with SO_REUSEPORT).",
    ),
    key(
        "http",
        "backlog",
        &[],
        "listen(2) backlog of each executor's HTTP socket.",
    ),
    key(
        "http",
        "header_timeout_ms",
        &[],
        "Time a client has to send a whole request head, ms.",
    ),
    key(
        "http",
        "requests_per_connection_max",
        &[],
        "Requests on one connection; the last is answered with Connection: close.",
    ),
    key(
        "http",
        "connection_age_max_ms",
        &[],
        "Age after which a connection is closed once its request in flight is answered, ms.",
    ),
    key(
        "http",
        "connections_per_address_per_core_max",
        &[],
        "HTTP connections one source address may hold per executor (503 past it).",
    ),
    key(
        "auth",
        "jwt_secret",
        &["CORECAST_JWT_SECRET"],
        "HS256 secret for client tokens; empty = a random dev secret, printed once.",
    ),
    key(
        "auth",
        "api_keys",
        &["CORECAST_API_KEYS"],
        "API keys accepted on /v1/*; empty = a random dev key, printed once.",
    ),
    key(
        "auth",
        "token_ttl_max_ms",
        &["CORECAST_TOKEN_TTL_MAX_MS"],
        "Longest exp - now a client token may have at the upgrade, ms.",
    ),
    key(
        "limits",
        "max_connections",
        &["CORECAST_MAX_CONNECTIONS"],
        "Concurrent WebSocket connections per node; past it handshakes get 503.",
    ),
    key(
        "limits",
        "max_channels_per_user",
        &["CORECAST_MAX_CHANNELS_PER_USER"],
        "Concurrent connections of one user; the oldest is closed with 4001.",
    ),
    key(
        "limits",
        "max_rooms_per_user",
        &["CORECAST_MAX_ROOMS_PER_USER"],
        "Rooms one user may be in at once.",
    ),
    key(
        "limits",
        "handshake_header_bytes_max",
        &[],
        "Bytes of the HTTP upgrade request line and headers.",
    ),
    key(
        "limits",
        "handshake_timeout_ms",
        &["CORECAST_HANDSHAKE_TIMEOUT_MS"],
        "Time a client has to finish the upgrade request, ms.",
    ),
    key(
        "limits",
        "handshake_request_line_timeout_ms",
        &["CORECAST_HANDSHAKE_REQUEST_LINE_TIMEOUT_MS"],
        "Time a client has to send the request line, ms.",
    ),
    key(
        "limits",
        "handshakes_per_address_max",
        &["CORECAST_HANDSHAKES_PER_ADDRESS_MAX"],
        "Handshakes in progress from one source address, node-wide (503 past it).",
    ),
    key(
        "limits",
        "client_message_bytes_max",
        &["CORECAST_CLIENT_MESSAGE_BYTES_MAX"],
        "Largest client frame or message, bytes (close 1009 past it).",
    ),
    key(
        "limits",
        "client_messages_per_sec_max",
        &["CORECAST_CLIENT_MESSAGES_PER_SEC_MAX"],
        "Client messages per second before an error frame; twice this closes with 1008.",
    ),
    key(
        "limits",
        "push_body_bytes_max",
        &[],
        "Largest push body on the HTTP API, bytes (413 past it).",
    ),
    key(
        "limits",
        "send_queue_frames_max",
        &[],
        "Frames waiting in one connection's outbound queue, a backstop to the byte cap (close 1013 past it).",
    ),
    key(
        "limits",
        "send_queue_bytes_max",
        &[],
        "Bytes waiting in one connection's outbound queue (close 1013 past it).",
    ),
    key(
        "limits",
        "core_link_bytes_max",
        &["CORECAST_CORE_LINK_BYTES_MAX"],
        "Bytes of pushes in flight from one core to another (503 when full).",
    ),
    key(
        "limits",
        "http_connections_per_core_max",
        &["CORECAST_HTTP_CONNECTIONS_PER_CORE_MAX"],
        "Concurrent HTTP connections per executor on the push API.",
    ),
    key(
        "limits",
        "http_idle_timeout_ms",
        &["CORECAST_HTTP_IDLE_TIMEOUT_MS"],
        "An HTTP connection with no byte in or out this long is closed, ms.",
    ),
    key(
        "limits",
        "key_pushes_per_sec_max",
        &["CORECAST_KEY_PUSHES_PER_SEC_MAX"],
        "Push requests per second per API key on this node (429 past it); 0 = none.",
    ),
    key(
        "limits",
        "node_pushes_per_sec_max",
        &["CORECAST_NODE_PUSHES_PER_SEC_MAX"],
        "Push requests per second on this node, all keys (429 past it); 0 = none.",
    ),
    key(
        "heartbeat",
        "ping_interval_ms",
        &["CORECAST_PING_INTERVAL_MS"],
        "The server pings each connection this often, ms.",
    ),
    key(
        "heartbeat",
        "idle_timeout_ms",
        &["CORECAST_IDLE_TIMEOUT_MS"],
        "A connection silent this long is closed with 1001, ms (> ping_interval_ms).",
    ),
    key(
        "cluster",
        "node_id",
        &["CORECAST_NODE_ID"],
        "This node's name in the cluster; empty = host name and WebSocket port.",
    ),
    key(
        "cluster",
        "mesh_listen",
        &["CORECAST_MESH_LISTEN"],
        "ZeroMQ PUB bind address (tcp://host:port); empty = no mesh.",
    ),
    key(
        "cluster",
        "mesh_peers",
        &["CORECAST_MESH_PEERS"],
        "Every peer's PUB address (tcp://host:port); a node may list itself.",
    ),
    key(
        "cluster",
        "mesh_key",
        &["CORECAST_MESH_KEY"],
        "Shared secret of the cluster, >= 32 bytes; empty = loopback-only mesh.",
    ),
    key(
        "shutdown",
        "drain_period_ms",
        &["CORECAST_DRAIN_PERIOD_MS"],
        "On SIGTERM/SIGINT, connections are closed with 1001 spread over this, ms.",
    ),
    key(
        "history",
        "ttl_ms",
        &[],
        "Pushes are kept this long for resume (since=), ms.",
    ),
    key(
        "history",
        "bytes_max",
        &[],
        "Bytes of retained pushes per node, oldest dropped first (503 when full of unexpired ones).",
    ),
    key(
        "history",
        "idempotency_ttl_ms",
        &[],
        "An Idempotency-Key is remembered this long, ms.",
    ),
    key(
        "history",
        "idempotency_keys_max",
        &[],
        "Idempotency keys remembered per node (503 past it).",
    ),
    key(
        "history",
        "memberships_max",
        &[],
        "Server-side room memberships stored per node (refused past it).",
    ),
];

/// Checks one `allowed_origins` entry: `http://` or `https://`, a host, an
/// optional port, and no path, query or user info.
pub fn parse_allowed_origin(entry: &str) -> Result<(), String> {
    let rest = entry
        .strip_prefix("https://")
        .or_else(|| entry.strip_prefix("http://"))
        .ok_or_else(|| format!("{entry:?} must start with http:// or https://"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty()
        || rest.chars().any(|c| {
            matches!(c, '/' | '?' | '#' | '@' | '*') || c.is_whitespace() || c.is_control()
        })
    {
        return Err(format!(
            "{entry:?} must be scheme://host[:port] with no path, wildcard or user info"
        ));
    }
    Ok(())
}

/// A switch: `1`/`true` or `0`/`false`.
fn parse_flag(name: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim() {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        other => Err(invalid(
            name,
            format!("{other:?}: expected 1, 0, true or false"),
        )),
    }
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// `config` as a TOML table of sections.
fn to_table(config: &Config) -> toml::Table {
    toml::Table::try_from(config).expect("a Config serializes to TOML")
}

fn from_table(table: toml::Table) -> Result<Config, toml::de::Error> {
    toml::Value::Table(table).try_into()
}

fn default_table() -> toml::Table {
    to_table(&Config::default())
}

fn default_of<'a>(defaults: &'a toml::Table, key: &Key) -> &'a toml::Value {
    &defaults[key.section][key.name]
}

/// Sets one key in `table` if the whole still deserializes (right type, in
/// the type's range); otherwise leaves `table` as it was and says why.
fn set_checked(table: &mut toml::Table, key: &Key, value: toml::Value) -> Result<(), String> {
    let mut trial = table.clone();
    let toml::Value::Table(section) = trial
        .entry(key.section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
    else {
        unreachable!("sections of a serialized Config are tables")
    };
    section.insert(key.name.into(), value);
    from_table(trial.clone()).map_err(|e| e.message().to_string())?;
    *table = trial;
    Ok(())
}

/// The TOML value an environment variable stands for, typed like the key's
/// default: integers, switches (1/0/true/false), comma-separated lists,
/// strings (addresses included).
fn env_value(table: &toml::Table, key: &Key, var: &str, raw: &str) -> Result<toml::Value, String> {
    Ok(match &table[key.section][key.name] {
        toml::Value::Integer(_) => {
            toml::Value::Integer(raw.trim().parse().map_err(|e| format!("{raw:?}: {e}"))?)
        }
        toml::Value::Boolean(_) => {
            toml::Value::Boolean(parse_flag(var, raw).map_err(|e| e.to_string())?)
        }
        toml::Value::Array(_) => toml::Value::Array(
            split_list(raw)
                .into_iter()
                .map(toml::Value::String)
                .collect(),
        ),
        _ => toml::Value::String(raw.to_string()),
    })
}

impl Config {
    /// Reads a TOML file; every missing field keeps its default. Every
    /// unknown key and wrong type is reported (see [`Self::parse_toml`]).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::parse_file(path).map_err(|errors| {
            ConfigError::from_list(errors).expect("parse_file fails with an error")
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::parse_toml(text, "<inline>").map_err(|errors| {
            ConfigError::from_list(errors).expect("parse_toml fails with an error")
        })
    }

    /// [`Self::parse_toml`] of a file's text.
    pub fn parse_file(path: &Path) -> Result<Self, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            vec![ConfigError::Read {
                path: path.display().to_string(),
                source,
            }]
        })?;
        Self::parse_toml(&text, &path.display().to_string())
    }

    /// Parses TOML against [`KEYS`]: every unknown key and every value of the
    /// wrong type is an error of its own (serde's `deny_unknown_fields`
    /// would stop at the first). Relations between values are
    /// [`Self::problems`]'.
    pub fn parse_toml(text: &str, path: &str) -> Result<Self, Vec<ConfigError>> {
        let (config, errors) = Self::parse_lenient(text, path).map_err(|e| vec![e])?;
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
    }

    /// The config of every key that is right (the others keep their
    /// defaults), and an error for each one that is not; `Err` only for
    /// text that is not TOML.
    fn parse_lenient(text: &str, path: &str) -> Result<(Self, Vec<ConfigError>), ConfigError> {
        let file: toml::Table = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_string(),
            source: Box::new(source),
        })?;
        let mut merged = default_table();
        let mut errors = Vec::new();
        for (section, entries) in file {
            if !SECTIONS.contains(&section.as_str()) {
                errors.push(ConfigError::UnknownKey { key: section });
                continue;
            }
            let toml::Value::Table(entries) = entries else {
                errors.push(ConfigError::WrongType {
                    key: section,
                    message: "expected a table ([section])".into(),
                });
                continue;
            };
            for (name, value) in entries {
                let Some(key) = Key::find(&section, &name) else {
                    errors.push(ConfigError::UnknownKey {
                        key: format!("{section}.{name}"),
                    });
                    continue;
                };
                if let Err(message) = set_checked(&mut merged, key, value) {
                    errors.push(ConfigError::WrongType {
                        key: key.path(),
                        message,
                    });
                }
            }
        }
        let config = from_table(merged).expect("set_checked keeps the table well-typed");
        Ok((config, errors))
    }

    /// Checks a file as `corecast config check` does, without the
    /// environment: every unknown key, every wrong type, and every value
    /// out of range among the keys that parsed (those of the wrong type are
    /// checked at their defaults).
    pub fn check_file(path: &Path) -> Result<Self, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            vec![ConfigError::Read {
                path: path.display().to_string(),
                source,
            }]
        })?;
        let (config, mut errors) =
            Self::parse_lenient(&text, &path.display().to_string()).map_err(|e| vec![e])?;
        errors.extend(config.problems());
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
    }

    /// Applies the `CORECAST_*` variables of [`KEYS`] from `lookup` (the
    /// process environment in production, a map in tests): for each key
    /// its aliases, then `CORECAST_<SECTION>_<KEY>` (so that one wins).
    /// Lists split on commas; switches take 1/0/true/false. Every bad
    /// variable is reported, each naming itself and its key.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let mut table = to_table(self);
        let mut errors = Vec::new();
        for key in KEYS {
            for var in key.env_vars() {
                let Some(raw) = lookup(&var) else { continue };
                let result = env_value(&table, key, &var, &raw)
                    .and_then(|value| set_checked(&mut table, key, value));
                if let Err(message) = result {
                    errors.push(ConfigError::Env {
                        var,
                        key: key.path(),
                        message,
                    });
                }
            }
        }
        *self = from_table(table).expect("set_checked keeps the table well-typed");
        match ConfigError::from_list(errors) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// `corecast config default`: every key of [`KEYS`] with its default
    /// and its comment (naming its variables), as TOML.
    pub fn default_toml() -> String {
        let defaults = default_table();
        let mut out = String::from(
            "# corecast configuration: every key with its default (`corecast config default`).\n\
             # Each comment names the key's environment variables (docs/contract.md lists them).\n",
        );
        for section in SECTIONS {
            out.push_str(&format!("\n[{section}]\n"));
            for key in KEYS.iter().filter(|k| k.section == *section) {
                let vars: Vec<String> = key.env_vars().collect();
                out.push_str(&format!("# {} ({})\n", key.comment, vars.join(", ")));
                let mut one = toml::Table::new();
                one.insert(key.name.into(), default_of(&defaults, key).clone());
                out.push_str(&toml::to_string(&one).expect("a default serializes"));
            }
        }
        out
    }

    /// The variable table of docs/contract.md, one row per key.
    pub fn env_markdown() -> String {
        let defaults = default_table();
        let mut out = String::from(
            "| variable | key | default | also read (older names) |\n|---|---|---|---|\n",
        );
        for key in KEYS {
            let aliases: Vec<String> = key.aliases.iter().map(|a| format!("`{a}`")).collect();
            out.push_str(&format!(
                "| `{}` | `{}` | `{}` | {} |\n",
                key.env_var(),
                key.path(),
                default_of(&defaults, key),
                aliases.join(", ")
            ));
        }
        out
    }

    /// Checks the relations between options; call after every source is
    /// applied.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match ConfigError::from_list(self.problems()) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Every value out of range and every relation between options that
    /// does not hold, each naming its key (empty: the config is good).
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let l = &self.limits;
        if l.max_connections == 0 {
            errors.push(invalid("limits.max_connections", "must be at least 1"));
        }
        if !(1..=limits::CHANNELS_PER_USER_CEILING).contains(&l.max_channels_per_user) {
            errors.push(invalid(
                "limits.max_channels_per_user",
                format!("must be 1..={}", limits::CHANNELS_PER_USER_CEILING),
            ));
        }
        if l.handshake_header_bytes_max < limits::HANDSHAKE_HEADER_BYTES_MIN
            || l.handshake_header_bytes_max > limits::READ_BUFFER_BYTES
        {
            errors.push(invalid(
                "limits.handshake_header_bytes_max",
                format!(
                    "must be {}..={}",
                    limits::HANDSHAKE_HEADER_BYTES_MIN,
                    limits::READ_BUFFER_BYTES
                ),
            ));
        }
        if l.client_message_bytes_max < limits::CLIENT_MESSAGE_BYTES_MIN
            || l.client_message_bytes_max > limits::CLIENT_MESSAGE_BYTES_CEILING
        {
            errors.push(invalid(
                "limits.client_message_bytes_max",
                format!(
                    "must be {}..={}",
                    limits::CLIENT_MESSAGE_BYTES_MIN,
                    limits::CLIENT_MESSAGE_BYTES_CEILING
                ),
            ));
        }
        if l.push_body_bytes_max == 0 || l.push_body_bytes_max > limits::PUSH_BODY_BYTES_CEILING {
            errors.push(invalid(
                "limits.push_body_bytes_max",
                format!("must be 1..={}", limits::PUSH_BODY_BYTES_CEILING),
            ));
        }
        if l.send_queue_frames_max == 0 {
            errors.push(invalid("limits.send_queue_frames_max", "must be >= 1"));
        }
        if l.send_queue_bytes_max < l.push_body_bytes_max {
            errors.push(invalid(
                "limits.send_queue_bytes_max",
                "must hold at least one push of limits.push_body_bytes_max",
            ));
        }
        if l.http_idle_timeout_ms == 0 {
            errors.push(invalid("limits.http_idle_timeout_ms", "must be > 0"));
        }
        if l.handshake_timeout_ms == 0 {
            errors.push(invalid("limits.handshake_timeout_ms", "must be > 0"));
        }
        if !(1..=limits::CLIENT_MESSAGES_PER_SEC_CEILING).contains(&l.client_messages_per_sec_max) {
            errors.push(invalid(
                "limits.client_messages_per_sec_max",
                format!("must be 1..={}", limits::CLIENT_MESSAGES_PER_SEC_CEILING),
            ));
        }
        if l.handshake_request_line_timeout_ms == 0 {
            errors.push(invalid(
                "limits.handshake_request_line_timeout_ms",
                "must be > 0",
            ));
        }
        if l.handshakes_per_address_max == 0 {
            errors.push(invalid("limits.handshakes_per_address_max", "must be > 0"));
        }
        if l.http_connections_per_core_max == 0 {
            errors.push(invalid(
                "limits.http_connections_per_core_max",
                "must be >= 1",
            ));
        }
        let http = &self.http;
        if http.header_timeout_ms == 0 {
            errors.push(invalid("http.header_timeout_ms", "must be > 0"));
        }
        if http.requests_per_connection_max == 0 {
            errors.push(invalid("http.requests_per_connection_max", "must be >= 1"));
        }
        if http.connection_age_max_ms == 0 {
            errors.push(invalid("http.connection_age_max_ms", "must be > 0"));
        }
        if http.connections_per_address_per_core_max == 0 {
            errors.push(invalid(
                "http.connections_per_address_per_core_max",
                "must be >= 1",
            ));
        }
        if self.auth.token_ttl_max_ms < 1_000 {
            errors.push(invalid(
                "auth.token_ttl_max_ms",
                "must be at least 1000 (token expiry has one-second resolution)",
            ));
        }
        for origin in &self.ws.allowed_origins {
            if let Err(message) = parse_allowed_origin(origin) {
                errors.push(invalid("ws.allowed_origins", message));
            }
        }
        let hist = &self.history;
        if hist.ttl_ms == 0 {
            errors.push(invalid("history.ttl_ms", "must be >= 1"));
        }
        if hist.bytes_max < limits::HISTORY_BYTES_MIN {
            errors.push(invalid(
                "history.bytes_max",
                format!("must be >= {}", limits::HISTORY_BYTES_MIN),
            ));
        }
        if hist.idempotency_ttl_ms == 0 {
            errors.push(invalid("history.idempotency_ttl_ms", "must be >= 1"));
        }
        let h = &self.heartbeat;
        if h.ping_interval_ms < limits::TICK_MS {
            errors.push(invalid(
                "heartbeat.ping_interval_ms",
                format!("must be >= {}", limits::TICK_MS),
            ));
        }
        if h.idle_timeout_ms <= h.ping_interval_ms {
            errors.push(invalid(
                "heartbeat.idle_timeout_ms",
                "must be > heartbeat.ping_interval_ms",
            ));
        }
        if self.ws.echo && !self.ws.listen.ip().is_loopback() {
            errors.push(ConfigError::EchoOffLoopback {
                listen: self.ws.listen,
            });
        }
        if self.ws.listen.port() != 0 && self.ws.listen == self.http.listen {
            errors.push(invalid("http.listen", "must differ from ws.listen"));
        }
        if self.cluster.mesh_listen.is_empty() && !self.cluster.mesh_peers.is_empty() {
            errors.push(invalid(
                "cluster.mesh_listen",
                "mesh_peers are set but mesh_listen is empty",
            ));
        }
        let key = &self.cluster.mesh_key;
        if !key.is_empty() && key.len() < MESH_KEY_BYTES_MIN {
            errors.push(ConfigError::MeshKeyTooShort { len: key.len() });
        }
        for addr in std::iter::once(&self.cluster.mesh_listen)
            .filter(|a| !a.is_empty())
            .chain(self.cluster.mesh_peers.iter())
        {
            if !addr.starts_with("tcp://") {
                errors.push(invalid(
                    "cluster.mesh_peers",
                    format!("{addr:?} is not a tcp:// address"),
                ));
            }
        }
        errors
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.handshake_timeout_ms)
    }

    pub fn drain_period(&self) -> Duration {
        Duration::from_millis(self.shutdown.drain_period_ms)
    }

    /// The executor count this node runs with.
    pub fn executor_count(&self) -> usize {
        match self.node.cores {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
        .min(limits::CORES_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn env_overrides_file() {
        let mut config = Config::from_toml("[ws]\nlisten = \"127.0.0.1:9000\"\n").unwrap();
        let env: HashMap<&str, &str> = [
            ("CORECAST_WS_LISTEN", "127.0.0.1:9100"),
            ("CORECAST_API_KEYS", "a, b,,c"),
            (
                "CORECAST_MESH_PEERS",
                "tcp://127.0.0.1:7001,tcp://127.0.0.1:7002",
            ),
        ]
        .into();
        config
            .apply_env(|k| env.get(k).map(|v| v.to_string()))
            .unwrap();
        assert_eq!(config.ws.listen.port(), 9100);
        assert_eq!(config.auth.api_keys, vec!["a", "b", "c"]);
        assert_eq!(config.cluster.mesh_peers.len(), 2);
    }

    #[test]
    fn bad_env_is_a_named_error() {
        let mut config = Config::default();
        let err = config
            .apply_env(|k| (k == "CORECAST_CORES").then(|| "many".to_string()))
            .unwrap_err();
        assert!(err.to_string().contains("CORECAST_CORES"), "{err}");
    }

    #[test]
    fn hostile_input_settings_have_env_vars() {
        let mut config = Config::default();
        let env: HashMap<&str, &str> = [
            (
                "CORECAST_WS_ALLOWED_ORIGINS",
                "https://a.example, http://localhost:3000",
            ),
            ("CORECAST_HTTP_HEADER_TIMEOUT_MS", "1500"),
            ("CORECAST_HTTP_REQUESTS_PER_CONNECTION_MAX", "7"),
            ("CORECAST_HTTP_CONNECTION_AGE_MAX_MS", "9000"),
            ("CORECAST_HTTP_CONNECTIONS_PER_ADDRESS_PER_CORE_MAX", "3"),
            ("CORECAST_HTTP_CONNECTIONS_PER_CORE_MAX", "5"),
            ("CORECAST_TOKEN_TTL_MAX_MS", "60000"),
            ("CORECAST_KEY_PUSHES_PER_SEC_MAX", "11"),
            ("CORECAST_NODE_PUSHES_PER_SEC_MAX", "0"),
        ]
        .into();
        config
            .apply_env(|k| env.get(k).map(|v| v.to_string()))
            .unwrap();
        config.validate().unwrap();
        assert_eq!(config.ws.allowed_origins.len(), 2);
        assert_eq!(config.http.header_timeout_ms, 1500);
        assert_eq!(config.http.requests_per_connection_max, 7);
        assert_eq!(config.http.connection_age_max_ms, 9000);
        assert_eq!(config.http.connections_per_address_per_core_max, 3);
        assert_eq!(config.limits.http_connections_per_core_max, 5);
        assert_eq!(config.auth.token_ttl_max_ms, 60_000);
        assert_eq!(config.limits.key_pushes_per_sec_max, 11);
        assert_eq!(config.limits.node_pushes_per_sec_max, 0);
        let mut bad = Config::default();
        bad.ws.allowed_origins = vec!["*.example".into()];
        assert!(bad.validate().is_err());
        let mut bad = Config::default();
        bad.http.header_timeout_ms = 0;
        assert!(bad.validate().is_err());
        let mut bad = Config::default();
        bad.auth.token_ttl_max_ms = 10;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn allowed_origin_entries_are_checked() {
        assert!(parse_allowed_origin("https://app.example").is_ok());
        assert!(parse_allowed_origin("http://localhost:3000").is_ok());
        assert!(parse_allowed_origin("http://localhost:3000/").is_ok());
        for bad in [
            "app.example",
            "https://",
            "https://a/b",
            "https://*.example",
            "ftp://a",
            "https://u@a",
        ] {
            assert!(parse_allowed_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_field_is_rejected() {
        assert!(Config::from_toml("[limits]\nmax_conections = 3\n").is_err());
    }

    #[test]
    fn a_short_mesh_key_is_a_typed_error_and_the_key_is_never_printed() {
        let mut config = Config::default();
        config
            .apply_env(|k| (k == "CORECAST_MESH_KEY").then(|| "too short".to_string()))
            .unwrap();
        assert!(matches!(
            config.validate(),
            Err(ConfigError::MeshKeyTooShort { len: 9 })
        ));
        config.cluster.mesh_key = "k".repeat(MESH_KEY_BYTES_MIN);
        config.validate().unwrap();
        assert!(!format!("{config:?}").contains(&config.cluster.mesh_key));
        let from_file = Config::from_toml("[cluster]\nmesh_key = \"abc\"\n").unwrap();
        assert_eq!(from_file.cluster.mesh_key, "abc");
    }

    #[test]
    fn echo_is_set_by_env_and_refused_off_loopback() {
        let env: HashMap<&str, &str> = [
            ("CORECAST_WS_ECHO", "1"),
            ("CORECAST_CLIENT_MESSAGE_BYTES_MAX", "65536"),
        ]
        .into();
        let mut config = Config::default();
        config
            .apply_env(|k| env.get(k).map(|v| v.to_string()))
            .unwrap();
        assert!(config.ws.echo);
        assert_eq!(config.limits.client_message_bytes_max, 65_536);
        config.validate().expect("echo on 127.0.0.1 is allowed");
        config.ws.listen = "[::1]:0".parse().unwrap();
        config.validate().expect("echo on ::1 is allowed");
        for listen in ["0.0.0.0:8080", "10.1.2.3:8080", "[::]:8080"] {
            config.ws.listen = listen.parse().unwrap();
            assert!(
                matches!(config.validate(), Err(ConfigError::EchoOffLoopback { .. })),
                "{listen}"
            );
        }
        let toml = Config::from_toml("[ws]\necho = true\nlisten = \"0.0.0.0:8080\"\n").unwrap();
        assert!(matches!(
            toml.validate(),
            Err(ConfigError::EchoOffLoopback { .. })
        ));
    }

    #[test]
    fn a_switch_takes_1_0_true_false_only() {
        for (value, want) in [
            ("1", true),
            ("true", true),
            ("0", false),
            (" false ", false),
        ] {
            let mut config = Config::default();
            config
                .apply_env(|k| (k == "CORECAST_WS_ECHO").then(|| value.to_string()))
                .unwrap();
            assert_eq!(config.ws.echo, want, "{value:?}");
        }
        let err = Config::default()
            .apply_env(|k| (k == "CORECAST_WS_ECHO").then(|| "yes".to_string()))
            .unwrap_err();
        assert!(err.to_string().contains("CORECAST_WS_ECHO"), "{err}");
    }

    #[test]
    fn the_key_table_and_the_structs_hold_the_same_keys() {
        let defaults = default_table();
        let sections: Vec<&str> = defaults.keys().map(String::as_str).collect();
        let mut want: Vec<&str> = SECTIONS.to_vec();
        want.sort_unstable();
        assert_eq!(sections, want, "SECTIONS vs Config's fields");
        let mut from_structs: Vec<String> = defaults
            .iter()
            .flat_map(|(section, t)| {
                t.as_table()
                    .unwrap()
                    .keys()
                    .map(move |k| format!("{section}.{k}"))
            })
            .collect();
        let mut from_table: Vec<String> = KEYS.iter().map(Key::path).collect();
        from_structs.sort();
        from_table.sort();
        assert_eq!(
            from_structs, from_table,
            "a field without a KEYS row, or a row without a field"
        );
        for key in KEYS {
            assert!(
                !key.comment.is_empty() && !key.comment.contains('\n'),
                "{}",
                key.path()
            );
        }
    }

    #[test]
    fn every_variable_name_is_unique_and_aliases_are_not_canonical() {
        let canonical: Vec<String> = KEYS.iter().map(Key::env_var).collect();
        let mut all: Vec<String> = KEYS.iter().flat_map(|k| k.env_vars()).collect();
        for key in KEYS {
            for alias in key.aliases {
                assert!(
                    !canonical.contains(&alias.to_string()),
                    "{alias} is a canonical name"
                );
                assert!(alias.starts_with("CORECAST_"), "{alias}");
            }
        }
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "a variable name sets two keys");
    }

    /// A value unlike the default, as an environment variable would carry it.
    fn other_value(default: &toml::Value) -> (String, toml::Value) {
        match default {
            toml::Value::Integer(i) => ((i + 1).to_string(), toml::Value::Integer(i + 1)),
            toml::Value::Boolean(b) => ((!b).to_string(), toml::Value::Boolean(!b)),
            toml::Value::Array(_) => (
                "tcp://a, tcp://b".into(),
                toml::Value::Array(vec!["tcp://a".into(), "tcp://b".into()]),
            ),
            toml::Value::String(s) if s.parse::<SocketAddr>().is_ok() => {
                ("127.0.0.1:4321".into(), "127.0.0.1:4321".into())
            }
            _ => ("some-value".into(), "some-value".into()),
        }
    }

    #[test]
    fn every_key_is_set_by_its_canonical_variable_and_by_each_alias() {
        let defaults = default_table();
        for key in KEYS {
            let (raw, want) = other_value(default_of(&defaults, key));
            for var in key.env_vars() {
                let mut config = Config::default();
                config
                    .apply_env(|k| (k == var).then(|| raw.clone()))
                    .unwrap_or_else(|e| panic!("{var}: {e}"));
                assert_eq!(to_table(&config)[key.section][key.name], want, "{var}");
            }
        }
    }

    #[test]
    fn the_canonical_variable_wins_over_an_alias() {
        let env: HashMap<&str, &str> = [
            ("CORECAST_MAX_CONNECTIONS", "5"),
            ("CORECAST_LIMITS_MAX_CONNECTIONS", "7"),
            ("CORECAST_CORES", "3"),
        ]
        .into();
        let mut config = Config::default();
        config
            .apply_env(|k| env.get(k).map(|v| v.to_string()))
            .unwrap();
        assert_eq!(config.limits.max_connections, 7);
        assert_eq!(config.node.cores, 3);
    }

    #[test]
    fn every_bad_variable_is_reported_with_its_key() {
        let env: HashMap<&str, &str> = [
            ("CORECAST_LIMITS_SEND_QUEUE_BYTES_MAX", "lots"),
            ("CORECAST_WS_LISTEN", "nowhere"),
            ("CORECAST_CORES", "-1"),
        ]
        .into();
        let err = Config::default()
            .apply_env(|k| env.get(k).map(|v| v.to_string()))
            .unwrap_err();
        let keys: Vec<String> = err
            .into_list()
            .iter()
            .map(|e| e.key().unwrap().to_string())
            .collect();
        assert_eq!(
            keys,
            ["node.cores", "ws.listen", "limits.send_queue_bytes_max"]
        );
    }

    #[test]
    fn config_default_is_valid_toml_that_parses_back_to_the_defaults() {
        let text = Config::default_toml();
        let config = Config::parse_toml(&text, "default").unwrap();
        assert!(config.problems().is_empty());
        assert_eq!(to_table(&config), default_table());
        for key in KEYS {
            assert!(text.contains(key.comment), "{}", key.path());
            assert!(text.contains(&key.env_var()), "{}", key.path());
        }
    }

    #[test]
    fn a_file_reports_every_unknown_key_wrong_type_and_range_error() {
        let text = "[limits]\nmax_conections = 3\nsend_queue_bytes_max = \"lots\"\n\
                    max_connections = 0\n[ws]\nlisten = 8080\nfree_join = true\n[nope]\nx = 1\n\
                    [heartbeat]\nidle_timeout_ms = 10\n";
        let errors = Config::parse_toml(text, "t").unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|e| e.key().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "limits.max_conections",
                "limits.send_queue_bytes_max",
                "nope",
                "ws.listen"
            ]
        );
        assert!(matches!(errors[0], ConfigError::UnknownKey { .. }));
        assert!(matches!(errors[1], ConfigError::WrongType { .. }));
        // The type errors set nothing; the range errors are the values'.
        let good_types = "[limits]\nmax_connections = 0\n[heartbeat]\nidle_timeout_ms = 10\n";
        let problems = Config::parse_toml(good_types, "t").unwrap().problems();
        let keys: Vec<&str> = problems.iter().map(|e| e.key().unwrap()).collect();
        assert_eq!(
            keys,
            ["limits.max_connections", "heartbeat.idle_timeout_ms"]
        );
        let one = ConfigError::from_list(problems).unwrap().to_string();
        assert!(one.starts_with("2 errors:"), "{one}");
        let not_a_table = Config::parse_toml("limits = 3\n", "t").unwrap_err();
        assert_eq!(not_a_table[0].key(), Some("limits"));
        let syntax = Config::parse_toml("[limits\n", "t").unwrap_err();
        assert!(matches!(syntax[..], [ConfigError::Parse { .. }]));
    }

    /// docs/contract.md holds `Config::env_markdown()` verbatim; regenerate
    /// it from this test's output when a key changes.
    #[test]
    fn contract_md_lists_every_variable() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/contract.md"))
            .unwrap();
        let table = Config::env_markdown();
        assert!(
            doc.contains(&table),
            "docs/contract.md lacks this table:\n{table}"
        );
    }

    #[test]
    fn idle_must_exceed_ping() {
        let mut config = Config::default();
        config.heartbeat.idle_timeout_ms = config.heartbeat.ping_interval_ms;
        assert!(config.validate().is_err());
    }
}
