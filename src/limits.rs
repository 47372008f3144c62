//! Named caps that are not configuration: sizes of buffers, pools and
//! tables, with `const` asserts between the related ones so that a change
//! to one cannot silently break another.
//!
//! Configurable limits (connections, queue depths, timeouts) live in
//! [`crate::config::LimitsConfig`]; the ceilings here bound what a
//! configuration may ask for.

/// Executors per node, at most (one per core; the cross-core mesh is n²).
pub const CORES_MAX: usize = 256;

/// Size of one pooled read buffer, taken while bytes arrive and returned
/// before the connection goes idle again.
pub const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Pooled read buffers kept per core; more are allocated under load and
/// freed when returned to a full pool.
pub const READ_BUFFER_POOL_MAX: usize = 8;

/// Smallest header cap a configuration may set (a browser sends ~500 bytes).
pub const HANDSHAKE_HEADER_BYTES_MIN: usize = 1024;

/// Headers parsed in one upgrade request; more is a 431-class refusal.
pub const HANDSHAKE_HEADERS_MAX: usize = 64;

/// Client message caps a configuration may choose between.
pub const CLIENT_MESSAGE_BYTES_MIN: usize = 256;
pub const CLIENT_MESSAGE_BYTES_CEILING: usize = 16 * 1024 * 1024;

/// Largest `client_messages_per_sec_max` (a connection counts its
/// messages in 16 bits, and twice the limit must fit).
pub const CLIENT_MESSAGES_PER_SEC_CEILING: u32 = 10_000;

/// Largest push body a configuration may allow.
pub const PUSH_BODY_BYTES_CEILING: usize = 16 * 1024 * 1024;

/// Upper bound of `max_channels_per_user`.
pub const CHANNELS_PER_USER_CEILING: usize = 1024;

/// Granularity of the per-core heartbeat wheel.
pub const TICK_MS: u64 = 1_000;

/// Slots of the heartbeat wheel: a deadline further than this many ticks
/// ahead waits a full turn more.
pub const WHEEL_SLOTS: usize = 64;

/// Messages in flight on each core-to-core channel.
pub const CORE_CHANNEL_CAPACITY: usize = 4096;

/// Envelopes waiting between the executors and the mesh thread, each way.
pub const MESH_CHANNEL_CAPACITY: usize = 65_536;

/// Bytes waiting in one core's inbox from the mesh thread.
pub const MESH_INBOX_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Largest WebSocket frame header: 2 bytes, 8 bytes of length, 4 of mask.
pub const FRAME_HEADER_BYTES_MAX: usize = 14;

/// Room and user names, in bytes.
pub const NAME_BYTES_MAX: usize = 256;

/// Users in one batch push.
pub const BATCH_USERS_MAX: usize = 10_000;

/// Connections closed per drain step during shutdown; steps are spread
/// evenly over `drain_period_ms`.
pub const DRAIN_STEPS: u64 = 50;

const _: () = assert!(HANDSHAKE_HEADER_BYTES_MIN <= READ_BUFFER_BYTES);
const _: () = assert!(CLIENT_MESSAGE_BYTES_MIN + FRAME_HEADER_BYTES_MAX <= READ_BUFFER_BYTES);
const _: () = assert!(WHEEL_SLOTS.is_power_of_two());
const _: () = assert!(
    CORES_MAX * CORES_MAX <= 1 << 16,
    "channel mesh is n squared"
);

/// Smallest `[history] bytes_max`: room for a few large pushes per core.
pub const HISTORY_BYTES_MIN: usize = 1024 * 1024;

/// How often a core tells the other cores how far its own origin has gone
/// when nothing was routed to them (advance markers), ms: a resume that
/// names a newer position of that origin waits about this long at most.
pub const ADVANCE_INTERVAL_MS: u64 = 10;

/// How long a resume waits for this core to catch up with a `since` that
/// is ahead of it (pushes still in flight), ms; then it replays what it has
/// and says `recovered: false`.
pub const RESUME_WAIT_MS: u64 = 1_000;

/// How often a waiting resume looks again, ms.
pub const RESUME_POLL_MS: u64 = 5;
