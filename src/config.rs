//! Node configuration: every option explicit, with units in its name and an
//! embedded default.
//!
//! Precedence, lowest first: embedded defaults, the TOML file (`--config`),
//! `CORECAST_*` environment variables, command-line flags. The environment
//! variable names listed in [`ENV_VARS`] are a contract that scripts, tests
//! and the ansible role drive nodes with: keep them stable.

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
    Invalid { name: &'static str, message: String },
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
}

fn invalid(name: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
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
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: String::new(),
            api_keys: Vec::new(),
            token_ttl_max_ms: TOKEN_TTL_MAX_DEFAULT_MS,
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
            send_queue_frames_max: 256,
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

/// The environment variables a node reads, each with what it sets.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("CORECAST_WS_LISTEN", "ws.listen"),
    ("CORECAST_HTTP_LISTEN", "http.listen"),
    ("CORECAST_JWT_SECRET", "auth.jwt_secret"),
    ("CORECAST_API_KEYS", "auth.api_keys (comma-separated)"),
    ("CORECAST_CORES", "node.cores"),
    ("CORECAST_MAX_CONNECTIONS", "limits.max_connections"),
    ("CORECAST_NODE_ID", "cluster.node_id"),
    ("CORECAST_MESH_LISTEN", "cluster.mesh_listen"),
    (
        "CORECAST_MESH_PEERS",
        "cluster.mesh_peers (comma-separated)",
    ),
    ("CORECAST_MESH_KEY", "cluster.mesh_key"),
    ("CORECAST_DRAIN_PERIOD_MS", "shutdown.drain_period_ms"),
    ("CORECAST_PING_INTERVAL_MS", "heartbeat.ping_interval_ms"),
    ("CORECAST_IDLE_TIMEOUT_MS", "heartbeat.idle_timeout_ms"),
    (
        "CORECAST_HANDSHAKE_TIMEOUT_MS",
        "limits.handshake_timeout_ms",
    ),
    (
        "CORECAST_MAX_CHANNELS_PER_USER",
        "limits.max_channels_per_user",
    ),
    ("CORECAST_FREE_JOIN", "ws.free_join"),
    ("CORECAST_MAX_ROOMS_PER_USER", "limits.max_rooms_per_user"),
    (
        "CORECAST_HTTP_IDLE_TIMEOUT_MS",
        "limits.http_idle_timeout_ms",
    ),
    (
        "CORECAST_CLIENT_MESSAGES_PER_SEC_MAX",
        "limits.client_messages_per_sec_max",
    ),
    (
        "CORECAST_HANDSHAKE_REQUEST_LINE_TIMEOUT_MS",
        "limits.handshake_request_line_timeout_ms",
    ),
    (
        "CORECAST_HANDSHAKES_PER_ADDRESS_MAX",
        "limits.handshakes_per_address_max",
    ),
    ("CORECAST_CORE_LINK_BYTES_MAX", "limits.core_link_bytes_max"),
    (
        "CORECAST_WS_ALLOWED_ORIGINS",
        "ws.allowed_origins (comma-separated)",
    ),
    ("CORECAST_HTTP_HEADER_TIMEOUT_MS", "http.header_timeout_ms"),
    (
        "CORECAST_HTTP_REQUESTS_PER_CONNECTION_MAX",
        "http.requests_per_connection_max",
    ),
    (
        "CORECAST_HTTP_CONNECTION_AGE_MAX_MS",
        "http.connection_age_max_ms",
    ),
    (
        "CORECAST_HTTP_CONNECTIONS_PER_ADDRESS_PER_CORE_MAX",
        "http.connections_per_address_per_core_max",
    ),
    ("CORECAST_TOKEN_TTL_MAX_MS", "auth.token_ttl_max_ms"),
    (
        "CORECAST_HTTP_CONNECTIONS_PER_CORE_MAX",
        "limits.http_connections_per_core_max",
    ),
    (
        "CORECAST_KEY_PUSHES_PER_SEC_MAX",
        "limits.key_pushes_per_sec_max",
    ),
    (
        "CORECAST_NODE_PUSHES_PER_SEC_MAX",
        "limits.node_pushes_per_sec_max",
    ),
    (
        "CORECAST_CLIENT_MESSAGE_BYTES_MAX",
        "limits.client_message_bytes_max",
    ),
    ("CORECAST_WS_ECHO", "ws.echo (1/0 or true/false)"),
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

fn parse_env<T: std::str::FromStr>(name: &'static str, value: &str) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    value
        .trim()
        .parse()
        .map_err(|e: T::Err| invalid(name, format!("{value:?}: {e}")))
}

/// A switch: `1`/`true` or `0`/`false`.
fn parse_flag(name: &'static str, value: &str) -> Result<bool, ConfigError> {
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

impl Config {
    /// Reads a TOML file; every missing field keeps its default.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: "<inline>".into(),
            source: Box::new(source),
        })
    }

    /// Applies `CORECAST_*` variables from `lookup` (the process environment
    /// in production, a map in tests).
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        for &(name, _) in ENV_VARS {
            let Some(value) = lookup(name) else { continue };
            match name {
                "CORECAST_WS_LISTEN" => self.ws.listen = parse_env(name, &value)?,
                "CORECAST_HTTP_LISTEN" => self.http.listen = parse_env(name, &value)?,
                "CORECAST_JWT_SECRET" => self.auth.jwt_secret = value,
                "CORECAST_API_KEYS" => self.auth.api_keys = split_list(&value),
                "CORECAST_CORES" => self.node.cores = parse_env(name, &value)?,
                "CORECAST_MAX_CONNECTIONS" => {
                    self.limits.max_connections = parse_env(name, &value)?
                }
                "CORECAST_NODE_ID" => self.cluster.node_id = value,
                "CORECAST_MESH_LISTEN" => self.cluster.mesh_listen = value,
                "CORECAST_MESH_PEERS" => self.cluster.mesh_peers = split_list(&value),
                "CORECAST_MESH_KEY" => self.cluster.mesh_key = value,
                "CORECAST_DRAIN_PERIOD_MS" => {
                    self.shutdown.drain_period_ms = parse_env(name, &value)?
                }
                "CORECAST_PING_INTERVAL_MS" => {
                    self.heartbeat.ping_interval_ms = parse_env(name, &value)?
                }
                "CORECAST_IDLE_TIMEOUT_MS" => {
                    self.heartbeat.idle_timeout_ms = parse_env(name, &value)?
                }
                "CORECAST_HANDSHAKE_TIMEOUT_MS" => {
                    self.limits.handshake_timeout_ms = parse_env(name, &value)?
                }
                "CORECAST_MAX_CHANNELS_PER_USER" => {
                    self.limits.max_channels_per_user = parse_env(name, &value)?
                }
                "CORECAST_FREE_JOIN" => self.ws.free_join = parse_flag(name, &value)?,
                "CORECAST_HTTP_IDLE_TIMEOUT_MS" => {
                    self.limits.http_idle_timeout_ms = parse_env(name, &value)?
                }
                "CORECAST_MAX_ROOMS_PER_USER" => {
                    self.limits.max_rooms_per_user = parse_env(name, &value)?
                }
                "CORECAST_CLIENT_MESSAGES_PER_SEC_MAX" => {
                    self.limits.client_messages_per_sec_max = parse_env(name, &value)?
                }
                "CORECAST_HANDSHAKE_REQUEST_LINE_TIMEOUT_MS" => {
                    self.limits.handshake_request_line_timeout_ms = parse_env(name, &value)?
                }
                "CORECAST_CORE_LINK_BYTES_MAX" => {
                    self.limits.core_link_bytes_max = parse_env(name, &value)?
                }
                "CORECAST_HANDSHAKES_PER_ADDRESS_MAX" => {
                    self.limits.handshakes_per_address_max = parse_env(name, &value)?
                }
                "CORECAST_WS_ALLOWED_ORIGINS" => self.ws.allowed_origins = split_list(&value),
                "CORECAST_HTTP_HEADER_TIMEOUT_MS" => {
                    self.http.header_timeout_ms = parse_env(name, &value)?
                }
                "CORECAST_HTTP_REQUESTS_PER_CONNECTION_MAX" => {
                    self.http.requests_per_connection_max = parse_env(name, &value)?
                }
                "CORECAST_HTTP_CONNECTION_AGE_MAX_MS" => {
                    self.http.connection_age_max_ms = parse_env(name, &value)?
                }
                "CORECAST_HTTP_CONNECTIONS_PER_ADDRESS_PER_CORE_MAX" => {
                    self.http.connections_per_address_per_core_max = parse_env(name, &value)?
                }
                "CORECAST_TOKEN_TTL_MAX_MS" => {
                    self.auth.token_ttl_max_ms = parse_env(name, &value)?
                }
                "CORECAST_HTTP_CONNECTIONS_PER_CORE_MAX" => {
                    self.limits.http_connections_per_core_max = parse_env(name, &value)?
                }
                "CORECAST_KEY_PUSHES_PER_SEC_MAX" => {
                    self.limits.key_pushes_per_sec_max = parse_env(name, &value)?
                }
                "CORECAST_NODE_PUSHES_PER_SEC_MAX" => {
                    self.limits.node_pushes_per_sec_max = parse_env(name, &value)?
                }
                "CORECAST_CLIENT_MESSAGE_BYTES_MAX" => {
                    self.limits.client_message_bytes_max = parse_env(name, &value)?
                }
                "CORECAST_WS_ECHO" => self.ws.echo = parse_flag(name, &value)?,
                _ => unreachable!("every ENV_VARS entry is matched"),
            }
        }
        Ok(())
    }

    /// Checks the relations between options; call after every source is
    /// applied.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if l.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if !(1..=limits::CHANNELS_PER_USER_CEILING).contains(&l.max_channels_per_user) {
            return Err(invalid(
                "limits.max_channels_per_user",
                format!("must be 1..={}", limits::CHANNELS_PER_USER_CEILING),
            ));
        }
        if l.handshake_header_bytes_max < limits::HANDSHAKE_HEADER_BYTES_MIN
            || l.handshake_header_bytes_max > limits::READ_BUFFER_BYTES
        {
            return Err(invalid(
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
            return Err(invalid(
                "limits.client_message_bytes_max",
                format!(
                    "must be {}..={}",
                    limits::CLIENT_MESSAGE_BYTES_MIN,
                    limits::CLIENT_MESSAGE_BYTES_CEILING
                ),
            ));
        }
        if l.push_body_bytes_max == 0 || l.push_body_bytes_max > limits::PUSH_BODY_BYTES_CEILING {
            return Err(invalid(
                "limits.push_body_bytes_max",
                format!("must be 1..={}", limits::PUSH_BODY_BYTES_CEILING),
            ));
        }
        if l.send_queue_frames_max == 0 || l.send_queue_bytes_max < l.push_body_bytes_max {
            return Err(invalid(
                "limits.send_queue_bytes_max",
                "must hold at least one push of push_body_bytes_max, with frames_max >= 1",
            ));
        }
        if l.http_idle_timeout_ms == 0 {
            return Err(invalid("limits.http_idle_timeout_ms", "must be > 0"));
        }
        if l.handshake_timeout_ms == 0 {
            return Err(invalid("limits.handshake_timeout_ms", "must be > 0"));
        }
        if !(1..=limits::CLIENT_MESSAGES_PER_SEC_CEILING).contains(&l.client_messages_per_sec_max) {
            return Err(invalid(
                "limits.client_messages_per_sec_max",
                format!("must be 1..={}", limits::CLIENT_MESSAGES_PER_SEC_CEILING),
            ));
        }
        if l.handshake_request_line_timeout_ms == 0 {
            return Err(invalid(
                "limits.handshake_request_line_timeout_ms",
                "must be > 0",
            ));
        }
        if l.handshakes_per_address_max == 0 {
            return Err(invalid("limits.handshakes_per_address_max", "must be > 0"));
        }
        if l.http_connections_per_core_max == 0 {
            return Err(invalid(
                "limits.http_connections_per_core_max",
                "must be >= 1",
            ));
        }
        let http = &self.http;
        if http.header_timeout_ms == 0 {
            return Err(invalid("http.header_timeout_ms", "must be > 0"));
        }
        if http.requests_per_connection_max == 0 {
            return Err(invalid("http.requests_per_connection_max", "must be >= 1"));
        }
        if http.connection_age_max_ms == 0 {
            return Err(invalid("http.connection_age_max_ms", "must be > 0"));
        }
        if http.connections_per_address_per_core_max == 0 {
            return Err(invalid(
                "http.connections_per_address_per_core_max",
                "must be >= 1",
            ));
        }
        if self.auth.token_ttl_max_ms < 1_000 {
            return Err(invalid(
                "auth.token_ttl_max_ms",
                "must be at least 1000 (token expiry has one-second resolution)",
            ));
        }
        for origin in &self.ws.allowed_origins {
            parse_allowed_origin(origin)
                .map_err(|message| invalid("ws.allowed_origins", message))?;
        }
        let h = &self.heartbeat;
        if h.ping_interval_ms < limits::TICK_MS || h.idle_timeout_ms <= h.ping_interval_ms {
            return Err(invalid(
                "heartbeat.idle_timeout_ms",
                format!(
                    "ping_interval_ms must be >= {} and idle_timeout_ms > ping_interval_ms",
                    limits::TICK_MS
                ),
            ));
        }
        if self.ws.echo && !self.ws.listen.ip().is_loopback() {
            return Err(ConfigError::EchoOffLoopback {
                listen: self.ws.listen,
            });
        }
        if self.ws.listen.port() != 0 && self.ws.listen == self.http.listen {
            return Err(invalid("http.listen", "must differ from ws.listen"));
        }
        if self.cluster.mesh_listen.is_empty() && !self.cluster.mesh_peers.is_empty() {
            return Err(invalid(
                "cluster.mesh_listen",
                "mesh_peers are set but mesh_listen is empty",
            ));
        }
        let key = &self.cluster.mesh_key;
        if !key.is_empty() && key.len() < MESH_KEY_BYTES_MIN {
            return Err(ConfigError::MeshKeyTooShort { len: key.len() });
        }
        for addr in std::iter::once(&self.cluster.mesh_listen)
            .filter(|a| !a.is_empty())
            .chain(self.cluster.mesh_peers.iter())
        {
            if !addr.starts_with("tcp://") {
                return Err(invalid(
                    "cluster.mesh_peers",
                    format!("{addr:?} is not a tcp:// address"),
                ));
            }
        }
        Ok(())
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
    fn idle_must_exceed_ping() {
        let mut config = Config::default();
        config.heartbeat.idle_timeout_ms = config.heartbeat.ping_interval_ms;
        assert!(config.validate().is_err());
    }
}
