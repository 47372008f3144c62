//! Error types of the load client: what failed and what the operator should look at.

use std::io;

/// A failure that ends a scenario (as opposed to a single failed connection, which is counted).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A command-line value is out of range or malformed; fix the invocation.
    #[error("bad argument: {0}")]
    BadArgument(String),
    /// A URL could not be parsed or resolved.
    #[error("bad url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// A worker process could not be started or misbehaved on its pipe.
    #[error("worker {index}: {reason}")]
    Worker { index: usize, reason: String },
    /// A phase did not complete within `--timeout`.
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout { what: String, secs: u64 },
    /// Reading or writing the output directory or a pipe failed.
    #[error("io: {0}")]
    Io(#[from] io::Error),
    /// A JSON document (summary, pipe message) did not parse.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// `--source-addrs` is malformed or an address cannot be bound here.
    #[error("{0}")]
    SourceAddr(#[from] crate::source_addrs::SourceAddrError),
    /// A `.hlog` file could not be written or read.
    #[error("{0}")]
    Hlog(#[from] crate::hist::HlogError),
    /// Runs given to `merge` do not belong together.
    #[error("merge: {0}")]
    Merge(String),
    /// A token could not be minted.
    #[error("jwt: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
}

/// Why a single client connection failed to establish; counted by kind, never fatal.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect failed (refused, unreachable, out of ports).
    #[error("connect: {0}")]
    Connect(io::Error),
    /// The socket failed during the upgrade exchange.
    #[error("io: {0}")]
    Io(#[from] io::Error),
    /// The server answered something other than 101 (401 bad token, 503 full, ...).
    #[error("http status {0}")]
    Status(u16),
    /// The upgrade answer was malformed or too large, or the accept key was wrong.
    #[error("bad handshake: {0}")]
    BadHandshake(&'static str),
    /// The server closed the socket before answering.
    #[error("closed during handshake")]
    Closed,
    /// Connect + upgrade did not finish within the handshake deadline.
    #[error("handshake timeout")]
    Timeout,
}

impl ConnectError {
    /// Short stable label used to count failures by kind in reports.
    pub fn label(&self) -> String {
        match self {
            ConnectError::Connect(e) => format!("connect_{:?}", e.kind()).to_lowercase(),
            ConnectError::Io(e) => format!("io_{:?}", e.kind()).to_lowercase(),
            ConnectError::Status(code) => format!("status_{code}"),
            ConnectError::BadHandshake(_) => "bad_handshake".to_string(),
            ConnectError::Closed => "closed".to_string(),
            ConnectError::Timeout => "timeout".to_string(),
        }
    }
}

/// A protocol violation by the server on an established connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame header did not parse.
    #[error("bad frame: {0}")]
    Bad(String),
    /// The server masked a frame (servers must not).
    #[error("masked server frame")]
    Masked,
    /// The frame or reassembled message exceeds FRAME_PAYLOAD_BYTES_MAX.
    #[error("frame too large: {0} bytes")]
    TooLarge(u64),
}
