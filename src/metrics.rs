//! Per-core counters and the Prometheus text rendered from them at scrape.
//!
//! Each core owns one [`CoreMetrics`]: plain atomics that only that core
//! writes (so no cache line is shared between cores on the hot path) and the
//! scraper reads. Latency histograms are hdrhistogram instances owned by
//! each core and copied to the scraping core over the channel mesh, then
//! merged. Names follow `corecast_<subsystem>_<name>_<unit>`; they are a
//! contract with the Grafana dashboard and the alert rules in `ansible/`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::session::disconnect::DisconnectReason;

macro_rules! labelled_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($variant),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub const COUNT: usize = Self::ALL.len();
            pub fn label(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }
        }
    };
}

labelled_enum!(
    /// `corecast_handshakes_total{outcome}`.
    HandshakeOutcome {
        Ok => "ok",
        BadRequest => "bad_request",
        Unauthorized => "unauthorized",
        OverCapacity => "over_capacity",
        Timeout => "timeout",
        TooLarge => "too_large",
        IoError => "io_error",
    }
);

labelled_enum!(
    /// `corecast_pushes_total{kind}`.
    PushKind {
        User => "user",
        Users => "users",
        Room => "room",
        Broadcast => "broadcast",
    }
);

labelled_enum!(
    /// `corecast_limit_refusals_total{limit}`: each named limit that refused
    /// something.
    Limit {
        MaxConnections => "max_connections",
        HandshakeHeaderBytes => "handshake_header_bytes",
        HandshakeTimeout => "handshake_timeout",
        ClientMessageBytes => "client_message_bytes",
        PushBodyBytes => "push_body_bytes",
        RoomsPerUser => "rooms_per_user",
        ClientMessageRate => "client_message_rate",
        SendQueue => "send_queue",
        HandshakesInFlight => "handshakes_in_flight",
        HandshakesPerAddress => "handshakes_per_address",
        HttpConnectionsPerAddress => "http_connections_per_address",
        HttpHeaderTimeout => "http_header_timeout",
        HttpIdleTimeout => "http_idle_timeout",
        KeyPushBudget => "key_push_budget",
        NodePushBudget => "node_push_budget",
    }
);

labelled_enum!(
    /// `corecast_http_requests_total{route}`.
    Route {
        PushUser => "push_user",
        PushUsers => "push_users",
        PushRoom => "push_room",
        PushBroadcast => "push_broadcast",
        RoomMember => "room_member",
        Presence => "presence",
        UserConnections => "user_connections",
        Metrics => "metrics",
        Health => "healthz",
        Ready => "readyz",
        Other => "other",
    }
);

/// HTTP statuses the push API answers with (the `status` label); any other
/// is counted as 500.
pub const HTTP_STATUSES: &[u16] = &[200, 202, 400, 401, 404, 405, 408, 413, 415, 429, 500, 503];

/// How many [`HTTP_STATUSES`] there are.
const HTTP_STATUS_COUNT: usize = HTTP_STATUSES.len();

/// Where an unlisted status is counted: 500.
const OTHER_STATUS_INDEX: usize = HTTP_STATUS_COUNT - 2;
const _: () = assert!(HTTP_STATUSES[OTHER_STATUS_INDEX] == 500);

fn status_index(status: u16) -> usize {
    HTTP_STATUSES
        .iter()
        .position(|s| *s == status)
        .unwrap_or(OTHER_STATUS_INDEX)
}

fn counters<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// Upper bounds (seconds) of the exported latency histogram buckets.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram in microseconds, 1 us to 60 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid")
}

/// The counters of one core. Written by that core only.
#[derive(Debug)]
pub struct CoreMetrics {
    pub connections: AtomicI64,
    pub users: AtomicI64,
    pub rooms: AtomicI64,
    pub deliveries: AtomicU64,
    /// Bytes and entries of this core's history (DESIGN section 3.1).
    pub history_bytes: AtomicI64,
    pub history_entries: AtomicI64,
    /// Resumes (`since=`) by outcome: recovered, not recovered.
    resumes: [AtomicU64; 2],
    /// Pushes sent again by resumes.
    replayed: AtomicU64,
    /// Handshakes this core accepted and handed to another (home) core.
    handoffs: AtomicU64,
    handshakes: [AtomicU64; HandshakeOutcome::COUNT],
    pushes: [AtomicU64; PushKind::COUNT],
    disconnects: [AtomicU64; DisconnectReason::COUNT],
    limits: [AtomicU64; Limit::COUNT],
    http: [[AtomicU64; HTTP_STATUS_COUNT]; Route::COUNT],
}

impl Default for CoreMetrics {
    fn default() -> Self {
        Self {
            connections: AtomicI64::new(0),
            users: AtomicI64::new(0),
            rooms: AtomicI64::new(0),
            deliveries: AtomicU64::new(0),
            history_bytes: AtomicI64::new(0),
            history_entries: AtomicI64::new(0),
            resumes: counters(),
            replayed: AtomicU64::new(0),
            handoffs: AtomicU64::new(0),
            handshakes: counters(),
            pushes: counters(),
            disconnects: counters(),
            limits: counters(),
            http: std::array::from_fn(|_| counters()),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl CoreMetrics {
    /// Counts one resume and the pushes it replayed.
    pub fn resumed(&self, recovered: bool, replayed: u64) {
        bump(&self.resumes[usize::from(!recovered)]);
        self.replayed.fetch_add(replayed, Ordering::Relaxed);
    }
    pub fn handshake(&self, outcome: HandshakeOutcome) {
        bump(&self.handshakes[outcome as usize]);
    }
    pub fn push(&self, kind: PushKind) {
        bump(&self.pushes[kind as usize]);
    }
    pub fn disconnect(&self, reason: DisconnectReason) {
        bump(&self.disconnects[reason as usize]);
    }
    pub fn refused(&self, limit: Limit) {
        bump(&self.limits[limit as usize]);
    }
    pub fn http(&self, route: Route, status: u16) {
        bump(&self.http[route as usize][status_index(status)]);
    }
    pub fn handed_off(&self) {
        bump(&self.handoffs);
    }
    pub fn delivered(&self, n: u64) {
        self.deliveries.fetch_add(n, Ordering::Relaxed);
    }
}

/// What one core reports at scrape besides its atomics.
#[derive(Debug, Clone)]
pub struct CoreSnapshot {
    pub push_latency_us: Histogram<u64>,
    pub busy_seconds: f64,
}

/// Node-wide facts shown in `corecast_node_info` and friends.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub node_id: String,
    pub max_connections: usize,
    pub ready: bool,
}

/// Everything one scrape renders: per-core atomics plus the snapshots.
#[derive(Debug)]
pub struct NodeCollector {
    pub facts: NodeFacts,
    pub cores: Vec<Arc<CoreMetrics>>,
    pub snapshots: Arc<Vec<CoreSnapshot>>,
}

fn load(v: &AtomicU64) -> u64 {
    v.load(Ordering::Relaxed)
}

fn counter_family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    series: impl Iterator<Item = (&'a str, u64)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value_label, value) in series {
        let labels = [(label, value_label)];
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A counter with one series per core, read from each core's atomics.
fn per_core_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    cores: &[Arc<CoreMetrics>],
    counter: impl Fn(&CoreMetrics) -> &AtomicU64,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (core, m) in cores.iter().enumerate() {
        let core = core.to_string();
        let labels = [("core", core.as_str())];
        ConstCounter::new(load(counter(m))).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge_per_core(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl Iterator<Item = i64>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (core, value) in values.enumerate() {
        let core = core.to_string();
        let labels = [("core", core.as_str())];
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Sums one labelled counter array over cores.
fn summed<const N: usize>(
    cores: &[Arc<CoreMetrics>],
    pick: impl Fn(&CoreMetrics) -> &[AtomicU64; N],
) -> [u64; N] {
    let mut total = [0u64; N];
    for core in cores {
        for (t, v) in total.iter_mut().zip(pick(core)) {
            *t += load(v);
        }
    }
    total
}

/// Encodes an hdrhistogram (microseconds) as a Prometheus histogram in
/// seconds with [`LATENCY_BUCKETS_SECONDS`].
pub fn encode_latency_histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    histogram: &Histogram<u64>,
) -> std::fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    let mut buckets = Vec::with_capacity(LATENCY_BUCKETS_SECONDS.len() + 1);
    let mut below = 0u64;
    for bound in LATENCY_BUCKETS_SECONDS {
        let bound_us = (bound * 1e6) as u64;
        let cumulative = if histogram.is_empty() {
            0
        } else {
            histogram.count_between(0, bound_us)
        };
        buckets.push((*bound, cumulative - below.min(cumulative)));
        below = cumulative.max(below);
    }
    buckets.push((f64::MAX, histogram.len() - below.min(histogram.len())));
    let sum_seconds = histogram.mean() * histogram.len() as f64 / 1e6;
    let mut metric = metric;
    metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        sum_seconds,
        histogram.len(),
        &buckets,
        None,
    )
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let cores = &self.cores;
        {
            let mut info = encoder.encode_descriptor(
                "corecast_node_info",
                "Node identity (value is always 1)",
                None,
                MetricType::Gauge,
            )?;
            let labels = [
                ("node_id", self.facts.node_id.as_str()),
                ("version", env!("CARGO_PKG_VERSION")),
            ];
            ConstGauge::new(1i64).encode(info.encode_family(&labels)?)?;
        }
        ConstGauge::new(i64::from(self.facts.ready)).encode(encoder.encode_descriptor(
            "corecast_node_ready",
            "1 while the node accepts connections, 0 while draining",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(self.facts.max_connections as i64).encode(encoder.encode_descriptor(
            "corecast_connections_max",
            "Configured max_connections",
            None,
            MetricType::Gauge,
        )?)?;
        let gauge = |c: &Arc<CoreMetrics>, pick: fn(&CoreMetrics) -> &AtomicI64| {
            pick(c).load(Ordering::Relaxed)
        };
        gauge_per_core(
            &mut encoder,
            "corecast_connections_active",
            "Open WebSocket connections",
            cores.iter().map(|c| gauge(c, |m| &m.connections)),
        )?;
        gauge_per_core(
            &mut encoder,
            "corecast_users_active",
            "Users with at least one connection",
            cores.iter().map(|c| gauge(c, |m| &m.users)),
        )?;
        gauge_per_core(
            &mut encoder,
            "corecast_rooms_active",
            "Rooms with at least one member",
            cores.iter().map(|c| gauge(c, |m| &m.rooms)),
        )?;
        gauge_per_core(
            &mut encoder,
            "corecast_history_bytes",
            "Bytes of pushes retained for resume",
            cores.iter().map(|c| gauge(c, |m| &m.history_bytes)),
        )?;
        gauge_per_core(
            &mut encoder,
            "corecast_history_entries",
            "Pushes retained for resume",
            cores.iter().map(|c| gauge(c, |m| &m.history_entries)),
        )?;
        let resumes = summed(cores, |c| &c.resumes);
        counter_family(
            &mut encoder,
            "corecast_resumes",
            "Resumes (since=) by outcome",
            "outcome",
            [("recovered", resumes[0]), ("not_recovered", resumes[1])].into_iter(),
        )?;
        per_core_counter(
            &mut encoder,
            "corecast_replayed_pushes",
            "Pushes sent again by resumes",
            cores,
            |m| &m.replayed,
        )?;
        let handshakes = summed(cores, |c| &c.handshakes);
        counter_family(
            &mut encoder,
            "corecast_handshakes",
            "WebSocket handshakes by outcome",
            "outcome",
            HandshakeOutcome::ALL
                .iter()
                .map(|o| (o.label(), handshakes[*o as usize])),
        )?;
        let pushes = summed(cores, |c| &c.pushes);
        counter_family(
            &mut encoder,
            "corecast_pushes",
            "Pushes accepted by this node's HTTP API, by kind",
            "kind",
            PushKind::ALL
                .iter()
                .map(|k| (k.label(), pushes[*k as usize])),
        )?;
        per_core_counter(
            &mut encoder,
            "corecast_deliveries",
            "Frames handed to client sockets (one per recipient connection)",
            cores,
            |m| &m.deliveries,
        )?;
        per_core_counter(
            &mut encoder,
            "corecast_handoffs",
            "Authenticated connections this core accepted and handed to the user's home core",
            cores,
            |m| &m.handoffs,
        )?;
        let disconnects = summed(cores, |c| &c.disconnects);
        counter_family(
            &mut encoder,
            "corecast_disconnects",
            "Connections closed by the node or the client, by reason",
            "reason",
            DisconnectReason::ALL
                .iter()
                .map(|r| (r.label(), disconnects[*r as usize])),
        )?;
        let limits = summed(cores, |c| &c.limits);
        counter_family(
            &mut encoder,
            "corecast_limit_refusals",
            "Requests, connections or messages refused by a named limit",
            "limit",
            Limit::ALL.iter().map(|l| (l.label(), limits[*l as usize])),
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                "corecast_http_requests",
                "HTTP API requests by route and status",
                None,
                MetricType::Counter,
            )?;
            for route in Route::ALL {
                for (i, status) in HTTP_STATUSES.iter().enumerate() {
                    let total: u64 = cores
                        .iter()
                        .map(|c| load(&c.http[*route as usize][i]))
                        .sum();
                    if total == 0 && !matches!(status, 200 | 202) {
                        continue;
                    }
                    let status = status.to_string();
                    let labels = [("route", route.label()), ("status", status.as_str())];
                    ConstCounter::new(total).encode(metric.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "corecast_executor_busy_seconds",
                "Time each executor spent running tasks",
                None,
                MetricType::Counter,
            )?;
            for (core, snapshot) in self.snapshots.iter().enumerate() {
                let core = core.to_string();
                let labels = [("core", core.as_str())];
                ConstCounter::new(snapshot.busy_seconds).encode(metric.encode_family(&labels)?)?;
            }
        }
        let mut merged = latency_histogram();
        for snapshot in self.snapshots.iter() {
            merged.add(&snapshot.push_latency_us).ok();
        }
        encode_latency_histogram(
            &mut encoder,
            "corecast_push_latency_seconds",
            "Push accepted by this node to written to the client socket (last recipient per core)",
            &merged,
        )?;
        Ok(())
    }
}

/// The Prometheus standard `process_*` figures of this process, read from
/// `/proc/self` at scrape (Linux only, like the node).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    pub cpu_seconds: f64,
    pub start_time_seconds: f64,
    pub open_fds: u64,
    /// The soft `RLIMIT_NOFILE`; `None` when it is unlimited.
    pub max_fds: Option<u64>,
}

/// Why the `process_*` figures could not be read; the scrape then leaves
/// them out and renders everything else.
#[derive(Debug, thiserror::Error)]
pub enum ProcessStatsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("{path} has no field {field}")]
    Field {
        path: &'static str,
        field: &'static str,
    },
}

const PROC_STAT_SELF: &str = "/proc/self/stat";
const PROC_STAT: &str = "/proc/stat";
const PROC_FD: &str = "/proc/self/fd";
const PROC_LIMITS: &str = "/proc/self/limits";

fn read_proc(path: &'static str) -> Result<String, ProcessStatsError> {
    std::fs::read_to_string(path).map_err(|source| ProcessStatsError::Read { path, source })
}

/// The fields of `/proc/self/stat` after the `(comm)` field, so that a
/// command name with spaces or parentheses cannot shift them: index 0 is
/// field 3 (state) of proc(5).
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_ascii_whitespace()
        .collect()
}

/// Reads field `n` (1-based, as proc(5) numbers them; n >= 3).
fn stat_field(fields: &[&str], n: usize, field: &'static str) -> Result<u64, ProcessStatsError> {
    fields
        .get(n - 3)
        .and_then(|v| v.parse().ok())
        .ok_or(ProcessStatsError::Field {
            path: PROC_STAT_SELF,
            field,
        })
}

/// The soft "Max open files" of `/proc/self/limits`; `None` = unlimited.
fn soft_open_files(limits: &str) -> Result<Option<u64>, ProcessStatsError> {
    let missing = || ProcessStatsError::Field {
        path: PROC_LIMITS,
        field: "Max open files",
    };
    let soft = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|l| l.split_ascii_whitespace().next())
        .ok_or_else(missing)?;
    match soft {
        "unlimited" => Ok(None),
        v => v.parse().map(Some).map_err(|_| missing()),
    }
}

/// Open descriptors: since Linux 6.2 `stat` of `/proc/self/fd` gives the
/// count in `st_size` at no cost; an older kernel answers 0 there, and then
/// the directory is listed (one entry per descriptor).
fn open_fds() -> Result<u64, ProcessStatsError> {
    let read = |source| ProcessStatsError::Read {
        path: PROC_FD,
        source,
    };
    let size = std::fs::metadata(PROC_FD).map_err(read)?.len();
    if size > 0 {
        return Ok(size);
    }
    Ok(std::fs::read_dir(PROC_FD).map_err(read)?.count() as u64)
}

impl ProcessStats {
    /// Reads this process's figures from `/proc`.
    pub fn read() -> Result<Self, ProcessStatsError> {
        // SAFETY: sysconf only reads a process-wide constant.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let (ticks, page) = (ticks.max(1) as f64, page.max(1) as u64);
        let stat = read_proc(PROC_STAT_SELF)?;
        let fields = stat_fields(&stat);
        let utime = stat_field(&fields, 14, "utime")?;
        let stime = stat_field(&fields, 15, "stime")?;
        let start_ticks = stat_field(&fields, 22, "starttime")?;
        let vsize = stat_field(&fields, 23, "vsize")?;
        let rss_pages = stat_field(&fields, 24, "rss")?;
        let boot_time: u64 = read_proc(PROC_STAT)?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())
            .ok_or(ProcessStatsError::Field {
                path: PROC_STAT,
                field: "btime",
            })?;
        Ok(Self {
            resident_memory_bytes: rss_pages * page,
            virtual_memory_bytes: vsize,
            cpu_seconds: (utime + stime) as f64 / ticks,
            start_time_seconds: boot_time as f64 + start_ticks as f64 / ticks,
            open_fds: open_fds()?,
            max_fds: soft_open_files(&read_proc(PROC_LIMITS)?)?,
        })
    }
}

/// Renders [`ProcessStats`] under the Prometheus standard `process_*` names.
#[derive(Debug)]
pub struct ProcessCollector(pub ProcessStats);

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        let gauges: [(&str, &str, f64); 4] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                s.resident_memory_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                s.virtual_memory_bytes as f64,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                s.open_fds as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                s.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            ConstGauge::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        if let Some(max) = s.max_fds {
            ConstGauge::new(max as f64).encode(encoder.encode_descriptor(
                "process_max_fds",
                "Maximum number of open file descriptors (soft limit)",
                None,
                MetricType::Gauge,
            )?)?;
        }
        ConstCounter::new(s.cpu_seconds).encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?)?;
        Ok(())
    }
}

/// Renders the Prometheus text exposition for a scrape.
pub fn render(collectors: Vec<Box<dyn Collector>>) -> String {
    let mut registry = Registry::default();
    for collector in collectors {
        registry.register_collector(collector);
    }
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("encoding to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_a_command_name_with_spaces() {
        let stat = "42 (a) b (c) R 1 2 3 0 -1 0 0 0 0 0 7 5 0 0 20 0 1 0 300 4096 10 0";
        let fields = stat_fields(stat);
        assert_eq!(stat_field(&fields, 14, "utime").unwrap(), 7);
        assert_eq!(stat_field(&fields, 15, "stime").unwrap(), 5);
        assert_eq!(stat_field(&fields, 22, "starttime").unwrap(), 300);
        assert_eq!(stat_field(&fields, 23, "vsize").unwrap(), 4096);
        assert_eq!(stat_field(&fields, 24, "rss").unwrap(), 10);
        assert!(stat_field(&fields, 40, "x").is_err());
        assert!(stat_field(&stat_fields("garbage"), 14, "utime").is_err());
    }

    #[test]
    fn soft_fd_limit_is_parsed() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            20000                40000                files\n";
        assert_eq!(soft_open_files(limits).unwrap(), Some(20000));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(soft_open_files(unlimited).unwrap(), None);
        assert!(soft_open_files("Max cpu time unlimited").is_err());
    }

    #[test]
    fn process_stats_of_this_process_render() {
        let stats = ProcessStats::read().unwrap();
        assert!(stats.resident_memory_bytes > 0);
        assert!(stats.virtual_memory_bytes >= stats.resident_memory_bytes);
        assert!(stats.open_fds >= 3);
        let text = render(vec![Box::new(ProcessCollector(stats))]);
        for name in [
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_open_fds ",
            "process_cpu_seconds_total ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    #[test]
    fn renders_contract_names() {
        let core = Arc::new(CoreMetrics::default());
        core.handshake(HandshakeOutcome::Unauthorized);
        core.disconnect(DisconnectReason::SlowConsumer);
        core.http(Route::PushUser, 408);
        core.http(Route::PushUser, 418);
        let mut hist = latency_histogram();
        hist.record(300).unwrap();
        hist.record(3_000).unwrap();
        let text = render(vec![Box::new(NodeCollector {
            facts: NodeFacts {
                node_id: "n1".into(),
                max_connections: 10,
                ready: true,
            },
            cores: vec![core],
            snapshots: Arc::new(vec![CoreSnapshot {
                push_latency_us: hist,
                busy_seconds: 1.5,
            }]),
        })]);
        for needle in [
            "corecast_handshakes_total{outcome=\"unauthorized\"} 1",
            "corecast_disconnects_total{reason=\"slow_consumer\"} 1",
            "corecast_connections_active{core=\"0\"} 0",
            "corecast_push_latency_seconds_bucket{le=\"0.0005\"} 1",
            "corecast_push_latency_seconds_bucket{le=\"+Inf\"} 2",
            "corecast_push_latency_seconds_count 2",
            "corecast_node_info{node_id=\"n1\"",
            "corecast_executor_busy_seconds_total{core=\"0\"} 1.5",
            "corecast_http_requests_total{route=\"push_user\",status=\"408\"} 1",
            "corecast_http_requests_total{route=\"push_user\",status=\"500\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
