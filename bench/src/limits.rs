//! Named limits of the load client, units last, with `const` asserts between related ones.
//!
//! Everything the client could grow without bound (connections per process, source ports,
//! tracked sequence numbers, pushes per run) is capped here, so a typo on the command line
//! cannot exhaust the machine.

/// Hard cap on open files per process on the bench machines (`ulimit -Hn`); it cannot be raised.
pub const PROCESS_FDS_HARD_CAP: usize = 20_000;
/// Sockets a worker process may hold, every kind counted (WebSocket, pipes, runtime fds).
pub const WORKER_SOCKETS_MAX: usize = 15_000;
/// Descriptors a worker keeps besides its connections: stdio, epoll, eventfd, slack.
pub const WORKER_FDS_OVERHEAD: usize = 64;
/// Default (and largest) number of client connections one worker process holds.
pub const WORKER_CONNECTIONS_MAX: usize = 14_000;
const _: () = assert!(WORKER_CONNECTIONS_MAX + WORKER_FDS_OVERHEAD < WORKER_SOCKETS_MAX);
const _: () = assert!(WORKER_SOCKETS_MAX < PROCESS_FDS_HARD_CAP);

/// Most connections one run may ask for.
pub const CONNECTIONS_MAX: u64 = 2_000_000;
/// Most worker processes one run may spawn.
pub const WORKERS_MAX: usize = 256;
const _: () = assert!((CONNECTIONS_MAX as usize).div_ceil(WORKER_CONNECTIONS_MAX) <= WORKERS_MAX);

/// Loopback source addresses rotated over: 127.0.0.2 ..= 127.0.0.(1 + SOURCE_ADDRS_COUNT).
pub const SOURCE_ADDRS_COUNT: u64 = 250;
/// First host octet of the rotated loopback source addresses (127.0.0.1 is left to servers).
pub const SOURCE_ADDR_FIRST_OCTET: u64 = 2;
/// Ephemeral ports per source address on this machine (`ip_local_port_range` 32768..=60999).
pub const EPHEMERAL_PORTS_PER_ADDR: u64 = 28_000;
const _: () = assert!(SOURCE_ADDR_FIRST_OCTET + SOURCE_ADDRS_COUNT <= 255);
const _: () = assert!(CONNECTIONS_MAX / SOURCE_ADDRS_COUNT < EPHEMERAL_PORTS_PER_ADDR);
/// Most addresses `--source-addrs` may expand to (a /20); every worker gets the whole list.
pub const SOURCE_ADDRS_MAX: usize = 4_096;

/// Deadline of one `--server-metrics` scrape (connect, request and answer).
pub const METRICS_SCRAPE_TIMEOUT_MS: u64 = 2_000;
/// A node serves `/metrics` from a cache refreshed at most once per second (the node's
/// SCRAPE_CACHE_MS); a scrape this long after a moment is sure to reflect that moment.
pub const METRICS_FRESH_AFTER_MS: u64 = 1_100;

/// Handshakes in flight per worker unless `--handshake-concurrency` says otherwise.
pub const HANDSHAKE_CONCURRENCY_DEFAULT: usize = 256;
/// Bytes of an HTTP upgrade answer the client accepts before giving up.
pub const HANDSHAKE_RESPONSE_BYTES_MAX: usize = 8_192;
/// Per-connection connect + upgrade deadline unless `--handshake-timeout-ms` says otherwise.
pub const HANDSHAKE_TIMEOUT_DEFAULT_MS: u64 = 10_000;

/// Bytes read per `read` call into the worker's shared scratch buffer.
pub const READ_SCRATCH_BYTES: usize = 64 * 1024;
/// Largest server frame (or reassembled message) a connection accepts.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = 1024 * 1024;
/// Sequence numbers tracked per connection for loss and duplicate detection.
pub const SEQ_TRACKED_MAX: u64 = 1 << 20;
/// Bytes of per-connection seq bitsets a broadcast run may need over all workers
/// (connections x messages / 8).
pub const SEQ_TRACKING_BYTES_MAX: u64 = 2 << 30;

/// Largest HTTP answer body the push client reads.
pub const HTTP_RESPONSE_BYTES_MAX: usize = 1024 * 1024;
/// Per-request deadline of the push client unless `--push-timeout-ms` says otherwise.
pub const PUSH_TIMEOUT_DEFAULT_MS: u64 = 10_000;
/// Keep-alive push connections unless `--concurrency` says otherwise.
pub const PUSH_CONCURRENCY_DEFAULT: usize = 32;
/// Most push lanes one run may run.
pub const PUSH_CONCURRENCY_MAX: usize = 1_024;
/// Most push connections the parent may hold (a unicast lane keeps one per `--http`).
pub const PUSH_CONNECTIONS_MAX: usize = 8_192;
const _: () = assert!(PUSH_CONNECTIONS_MAX + WORKERS_MAX * 3 < PROCESS_FDS_HARD_CAP);
/// Most pushes one unicast run may schedule (rate x duration).
pub const UNICAST_PUSHES_MAX: u64 = 20_000_000;
/// Most broadcast messages one run may send.
pub const BROADCAST_MESSAGES_MAX: u64 = 100_000;
const _: () = assert!(BROADCAST_MESSAGES_MAX <= SEQ_TRACKED_MAX);

/// Latency histograms cover 1 us ..= this many microseconds (values above are clamped).
pub const HISTOGRAM_MAX_US: u64 = 600_000_000;
/// Significant decimal digits the histograms keep.
pub const HISTOGRAM_SIGFIG: u8 = 3;

/// How often workers and the parent print progress during long phases.
pub const PROGRESS_INTERVAL_MS: u64 = 1_000;
/// How often workers send delivery counters during a phase (the parent's drain wait ends on them).
pub const STATS_INTERVAL_MS: u64 = 100;
/// How often the parent polls worker state while waiting for a condition.
pub const POLL_INTERVAL_MS: u64 = 5;
/// Default bound on each phase of a scenario (`--timeout`).
pub const PHASE_TIMEOUT_DEFAULT_SECS: u64 = 120;
/// Lifetime of minted client tokens.
pub const TOKEN_TTL_SECS: u64 = 24 * 3_600;
