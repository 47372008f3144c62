//! Command line: the three scenarios (`idle`, `broadcast`, `unicast`), `report`, `merge`, and
//! the hidden `worker` subcommand the parent re-executes itself with.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::limits::{
    HANDSHAKE_CONCURRENCY_DEFAULT, HANDSHAKE_TIMEOUT_DEFAULT_MS, PHASE_TIMEOUT_DEFAULT_SECS,
    PUSH_CONCURRENCY_DEFAULT, PUSH_TIMEOUT_DEFAULT_MS, WORKER_CONNECTIONS_MAX,
};
use crate::target::TargetKind;

#[derive(Parser, Debug)]
#[command(
    name = "corecast-bench",
    version,
    about = "Load client for corecast (and nchan): connections, broadcast fan-out, open-loop unicast"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Open --n connections, hold them idle, measure connect rate and server memory per connection.
    Idle(IdleArgs),
    /// Open --n connections, broadcast --messages pushes, measure fan-out time and CPU per delivery.
    Broadcast(BroadcastArgs),
    /// Open --n connections, push to single users at a fixed --rate (open loop), measure latency.
    Unicast(UnicastArgs),
    /// Print a side-by-side table of earlier runs from their summary.json.
    Report {
        /// Output directories of earlier runs.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
    /// Merge runs of the same scenario made at the same time (several client processes or
    /// machines against one cluster) into one summary.json, .hgrm, .hlog and plot.
    Merge {
        /// Directory for the merged output.
        #[arg(long)]
        out: PathBuf,
        /// Output directories of the runs to merge (each with summary.json and *.hlog).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
    /// Internal: one worker process driven over stdin/stdout by the parent.
    #[command(hide = true)]
    Worker,
}

/// Options every scenario shares.
#[derive(Args, Debug, Clone, Serialize)]
pub struct Common {
    /// WebSocket endpoint (repeatable: connections are spread round-robin), e.g. ws://127.0.0.1:8080
    #[arg(long = "ws", required = true)]
    pub ws: Vec<String>,
    /// Push API endpoint (repeatable: pushes are spread round-robin), e.g. http://127.0.0.1:8081
    #[arg(long = "http")]
    pub http: Vec<String>,
    /// HS256 secret the nodes verify client tokens with.
    #[arg(
        long,
        env = "CORECAST_JWT_SECRET",
        default_value = "",
        hide_env_values = true
    )]
    #[serde(skip)]
    pub jwt_secret: String,
    /// API key for the push API.
    #[arg(
        long,
        env = "CORECAST_API_KEY",
        default_value = "",
        hide_env_values = true
    )]
    #[serde(skip)]
    pub api_key: String,
    /// Number of client connections (uids u0 .. u{n-1}).
    #[arg(long, default_value_t = 1_000)]
    pub n: u64,
    /// Directory for summary.json, *.hgrm and latency.svg.
    #[arg(long)]
    pub out: PathBuf,
    /// Server process on this machine to sample RSS and CPU time of from /proc (repeatable).
    #[arg(long = "server-pid")]
    pub server_pid: Vec<u32>,
    /// A node's metrics URL to sample RSS and CPU time from (`process_resident_memory_bytes`,
    /// `process_cpu_seconds_total`), for a node on another machine (repeatable), e.g.
    /// http://10.0.0.1:8081/metrics. Give a node either here or in --server-pid, not both.
    #[arg(long = "server-metrics")]
    pub server_metrics: Vec<String>,
    /// Bound on each phase (connect, deliver, drain), seconds.
    #[arg(long, default_value_t = PHASE_TIMEOUT_DEFAULT_SECS)]
    pub timeout: u64,
    /// Kind of server under test.
    #[arg(long, value_enum, default_value = "corecast")]
    pub target: TargetKind,
    /// Pin worker k to core k (mod the core count).
    #[arg(long)]
    pub pin: bool,
    /// Limit new connections per second over all workers (default: as fast as handshakes allow).
    #[arg(long)]
    pub ramp_per_sec: Option<f64>,
    /// Handshakes in flight per worker.
    #[arg(long, default_value_t = HANDSHAKE_CONCURRENCY_DEFAULT)]
    pub handshake_concurrency: usize,
    /// Deadline of one connect + upgrade, milliseconds (a late one counts as failed).
    #[arg(long, default_value_t = HANDSHAKE_TIMEOUT_DEFAULT_MS)]
    pub handshake_timeout_ms: u64,
    /// Deadline of one push request, milliseconds (a broadcast push whose answer times out is
    /// still tracked: it may have been delivered).
    #[arg(long, default_value_t = PUSH_TIMEOUT_DEFAULT_MS)]
    pub push_timeout_ms: u64,
    /// Worker processes (default: as few as --per-worker allows).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Most connections per worker process.
    #[arg(long, default_value_t = WORKER_CONNECTIONS_MAX)]
    pub per_worker: usize,
    /// Local source addresses to spread connections over (comma-separated IPv4 addresses or
    /// CIDR blocks, e.g. 10.0.0.5,10.0.0.6 or 10.0.1.0/28). Default: 127.0.0.2..=251 when
    /// every --ws target is loopback, else the kernel's choice.
    #[arg(long, value_delimiter = ',')]
    pub source_addrs: Vec<String>,
    /// Do not bind client sockets to source addresses at all (overrides --source-addrs).
    #[arg(long)]
    pub no_source_rotation: bool,
    /// First uid: connections are users u{offset} .. u{offset + n - 1}. Give each client
    /// machine of one run its own range.
    #[arg(long, default_value_t = 0)]
    pub uid_offset: u64,
    /// Rooms put in every token's `rooms` claim (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub rooms: Vec<String>,
    /// Wait until this unix time (seconds) before connecting, so client machines started by
    /// hand or by ssh one after the other connect together.
    #[arg(long)]
    pub start_at: Option<u64>,
    /// Free-form label shown by `report`.
    #[arg(long)]
    pub label: Option<String>,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Seconds to hold the connections idle before the final server sample.
    #[arg(long, default_value_t = 5)]
    pub hold_secs: u64,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct BroadcastArgs {
    #[command(flatten)]
    pub common: Common,
    /// Broadcast pushes to send.
    #[arg(long, default_value_t = 10)]
    pub messages: u64,
    /// Gap between broadcast pushes, milliseconds.
    #[arg(long, default_value_t = 1_000)]
    pub interval_ms: u64,
    /// Push nothing: wait (up to --timeout) for --messages broadcasts pushed by another client
    /// run (seqs 0 .. messages-1) and measure their delivery here. For several client
    /// machines: one pushes, the others receive only.
    #[arg(long)]
    pub receive_only: bool,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct UnicastArgs {
    #[command(flatten)]
    pub common: Common,
    /// Pushes per second, on a fixed schedule (open loop).
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,
    /// Seconds of pushing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Keep-alive push connections (lanes); push k goes on lane k mod concurrency.
    #[arg(long, default_value_t = PUSH_CONCURRENCY_DEFAULT)]
    pub concurrency: usize,
}
