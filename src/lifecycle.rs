//! Starting and stopping a node: keys, ports, one pinned glommio executor
//! per core joined into a channel mesh (each runs [`crate::executor::run`]),
//! the cluster mesh thread, and the signal wait that turns SIGTERM/SIGINT
//! into a graceful drain.
//!
//! Stop order: the drain flag is raised; each core stops accepting, closes
//! its connections with 1001 spread over `drain_period` and ends; then the
//! mesh thread flushes and stops; the process exits 0.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{SockaddrStorage, getsockname};

use crate::auth::{ApiKeys, TokenKeys};
use crate::config::Config;
use crate::core::{CoreMsg, plan_received};
use crate::executor::ExecutorError;
use crate::limits::{CORE_CHANNEL_CAPACITY, MESH_CHANNEL_CAPACITY, MESH_INBOX_BYTES_MAX};
use crate::link::Links;
use crate::metrics::CoreMetrics;
use crate::node::{Capacity, Node};
use crate::push::id_prefix;
use crate::startup::{Failure, StartCause, Tried, diagnose};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up io_uring: {cause} (the error: {message})")]
    IoUring { cause: StartCause, message: String },
    #[error("cannot start executor {core}: {cause} (the error: {message})")]
    Spawn {
        core: usize,
        cause: StartCause,
        message: String,
    },
    #[error("executor {core}: {source}")]
    Executor { core: usize, source: ExecutorError },
    #[error("executor {core} did not come up within {READY_TIMEOUT:?}")]
    NotReady { core: usize },
    #[error("cannot start the cluster mesh: {0}")]
    Mesh(String),
    #[error("signal setup failed: {0}")]
    Signals(nix::Error),
}

/// Extra file descriptors a node needs beyond one per connection
/// (listeners, io_uring, mesh sockets, HTTP clients).
pub const FD_MARGIN: u64 = 1024;

/// How long start-up waits for every executor to bind its listeners.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the signal wait also checks that every executor still runs.
const SIGNAL_POLL_NS: i64 = 200_000_000;

/// A socket in the `SO_REUSEPORT` group of `addr` that pins a port chosen
/// by the kernel (port 0) until every executor has bound it.
fn reserve_port(addr: SocketAddr) -> Result<(SocketAddr, Option<OwnedFd>), StartError> {
    if addr.port() != 0 {
        return Ok((addr, None));
    }
    let fail = |e: nix::Error| StartError::Bind {
        addr,
        source: e.into(),
    };
    let fd = crate::listener::reuseport_socket(addr).map_err(fail)?;
    let bound: SockaddrStorage = getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd)).map_err(fail)?;
    let port = bound
        .as_sockaddr_in()
        .map(|a| a.port())
        .or_else(|| bound.as_sockaddr_in6().map(|a| a.port()))
        .unwrap_or(0);
    Ok((SocketAddr::new(addr.ip(), port), Some(fd)))
}

/// The soft limit of `resource`, when readable.
fn soft_limit(resource: nix::sys::resource::Resource) -> Option<u64> {
    nix::sys::resource::getrlimit(resource)
        .ok()
        .map(|(soft, _)| soft)
}

/// `kernel.io_uring_disabled` (0 allowed, 1 group only, 2 disabled), when
/// the kernel has it.
fn io_uring_disabled() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The cause of a failed executor or io_uring start, and the error's text.
fn executor_cause(error: &std::io::Error) -> (StartCause, String) {
    use nix::sys::resource::Resource;
    let message = error.to_string();
    let cause = diagnose(&Failure {
        tried: Tried::Executor,
        errno: error.raw_os_error(),
        message: &message,
        io_uring_disabled: io_uring_disabled(),
        memlock_bytes: soft_limit(Resource::RLIMIT_MEMLOCK),
        nofile: soft_limit(Resource::RLIMIT_NOFILE),
    });
    (cause, message)
}

/// A failed executor start, with its cause and fix.
fn spawn_error(core: usize, error: &std::io::Error) -> StartError {
    let (cause, message) = executor_cause(error);
    StartError::Spawn {
        core,
        cause,
        message,
    }
}

/// Bytes of `struct io_uring_params` (linux/io_uring.h), as 32-bit words.
const IO_URING_PARAMS_WORDS: usize = 120 / 4;

/// Sets up and closes a one-entry io_uring, so that a blocked or missing
/// io_uring is reported with its errno before any executor starts (glommio
/// panics when it cannot probe io_uring).
fn probe_io_uring() -> Result<(), StartError> {
    let mut params = [0u32; IO_URING_PARAMS_WORDS];
    // SAFETY: io_uring_setup reads and writes one io_uring_params, which
    // `params` holds (zeroed: no flags).
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        let (cause, message) = executor_cause(&std::io::Error::last_os_error());
        return Err(StartError::IoUring { cause, message });
    }
    // SAFETY: `fd` is the ring this function just opened and owns.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// Reports on `ready` that an executor ended before its future ran
/// (glommio could not set up its rings), unless disarmed by that future.
struct StartWatch {
    core: usize,
    ready: Option<crate::executor::Ready>,
}

impl StartWatch {
    fn disarm(mut self) -> crate::executor::Ready {
        self.ready.take().expect("armed until disarmed")
    }
}

impl Drop for StartWatch {
    fn drop(&mut self) {
        if let Some(ready) = self.ready.take() {
            let _ = ready.send((self.core, Err(ExecutorError::NotStarted)));
        }
    }
}

/// Warns when the open-file limit cannot hold `max_connections`.
fn check_fd_limit(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let wanted = max_connections as u64 + FD_MARGIN;
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            // Raise the soft limit as far as the hard one allows.
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(wanted.max(soft)), hard);
        }
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((soft, hard));
        if let Some(cause) = crate::startup::fd_limit(soft, wanted) {
            tracing::warn!(
                nofile = soft,
                max_connections,
                accepts_fail_past = soft.saturating_sub(FD_MARGIN),
                "{cause}"
            );
        }
    }
}

/// Starts the cluster mesh with a bridge that routes what it receives into
/// the cores' inboxes (never blocking the mesh thread: a full inbox is a
/// counted drop).
fn start_mesh(
    config: &Config,
    to_cores: Vec<async_channel::Sender<CoreMsg>>,
    links: Arc<Links>,
    metrics: Arc<crate::mesh::MeshMetrics>,
) -> Result<Option<crate::mesh::MeshHandle>, StartError> {
    use crate::mesh::{DropReason, Received};
    let bridge_metrics = metrics.clone();
    let router = std::cell::RefCell::new(crate::history::MeshRouter::new(to_cores.len()));
    let deliver = Box::new(move |received: Received| {
        let plan = plan_received(received, to_cores.len(), &mut router.borrow_mut());
        for (core, msg) in plan {
            let inbox = links.from_mesh(core);
            let bytes = msg.weight();
            if !inbox.try_reserve(bytes) {
                bridge_metrics.count_drop(DropReason::DeliverFull, 1);
            } else if to_cores[core].try_send(msg).is_err() {
                inbox.release(bytes);
                bridge_metrics.count_drop(DropReason::DeliverFull, 1);
            }
        }
    });
    crate::mesh::start(&config.cluster, deliver, metrics)
        .map_err(|e| StartError::Mesh(e.to_string()))
}

/// Logs what the node starts with: version, cores, listeners, and the
/// limits an operator checks first.
fn log_start(config: &Config, cores: usize) {
    use nix::sys::resource::Resource;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        node_id = %config.cluster.node_id,
        cores,
        ws = %config.ws.listen,
        http = %config.http.listen,
        mesh = %config.cluster.mesh_listen,
        mesh_peers = config.cluster.mesh_peers.len(),
        max_connections = config.limits.max_connections,
        nofile = soft_limit(Resource::RLIMIT_NOFILE),
        memlock_bytes = soft_limit(Resource::RLIMIT_MEMLOCK),
        io_memory_kib = config.node.io_memory_kib,
        ring_depth = config.node.ring_depth,
        "starting"
    );
}

/// A running node's handles, for the signal wait.
struct Running {
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
    node: Arc<Node>,
    alive: Arc<AtomicUsize>,
    cores: usize,
    drain_trigger: async_channel::Sender<()>,
}

/// Counts a running executor; dropped when it ends, panics included.
struct AliveGuard(Arc<AtomicUsize>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs a node until SIGTERM/SIGINT, then drains it. `announce` is called
/// once every executor listens, with the bound addresses.
pub fn run(mut config: Config, announce: impl FnOnce(&Config, &Node)) -> Result<(), StartError> {
    // Signals are taken by sigwait in this thread only: block them before
    // any other thread exists so that every thread inherits the mask.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().map_err(StartError::Signals)?;

    check_fd_limit(config.limits.max_connections);
    let (ws, ws_hold) = reserve_port(config.ws.listen)?;
    let (http, http_hold) = reserve_port(config.http.listen)?;
    config.ws.listen = ws;
    config.http.listen = http;
    let cores = config.executor_count();
    if config.cluster.node_id.is_empty() {
        config.cluster.node_id = format!(
            "{}-{}",
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "node".into()),
            ws.port()
        );
    }
    log_start(&config, cores);
    probe_io_uring()?;
    let config = Arc::new(config);
    let core_metrics: Vec<Arc<CoreMetrics>> = (0..cores).map(|_| Arc::default()).collect();
    let (foreign_tx, foreign_rx): (Vec<_>, Vec<_>) = (0..cores)
        .map(|_| async_channel::bounded::<CoreMsg>(MESH_CHANNEL_CAPACITY))
        .unzip();
    let mesh_metrics = crate::mesh::new_metrics();
    let links = Arc::new(Links::new(
        cores,
        (CORE_CHANNEL_CAPACITY, config.limits.core_link_bytes_max),
        (MESH_CHANNEL_CAPACITY, MESH_INBOX_BYTES_MAX),
    ));
    let mesh = start_mesh(&config, foreign_tx, links.clone(), mesh_metrics.clone())?;
    let (drain_trigger, drain_signal) = async_channel::bounded::<()>(1);
    let node = Arc::new(Node {
        node_id: config.cluster.node_id.clone(),
        tokens: TokenKeys::from_config(&config.auth),
        api_keys: ApiKeys::new(&config.auth.api_keys),
        id_prefix: id_prefix(),
        incarnation: crate::history::Origin::random_incarnation(),
        capacity: Capacity::new(config.limits.max_connections),
        draining: AtomicBool::new(false),
        drain_signal,
        core_metrics,
        links,
        mesh,
        mesh_metrics,
        history_room: (0..cores)
            .map(|_| crate::node::HistoryRoom::new(config.history.bytes_max / cores.max(1)))
            .collect(),
        config: config.clone(),
    });

    let channel_mesh = MeshBuilder::full(cores, CORE_CHANNEL_CAPACITY);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut executors = Vec::with_capacity(cores);
    let running_cores = Arc::new(AtomicUsize::new(0));
    for (id, foreign) in foreign_rx.into_iter().enumerate() {
        let node = node.clone();
        let channel_mesh = channel_mesh.clone();
        let watch = StartWatch {
            core: id,
            ready: Some(ready_tx.clone()),
        };
        let alive = running_cores.clone();
        alive.fetch_add(1, Ordering::SeqCst);
        let cpu = (config.node.first_cpu + id) % online;
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("corecast-core-{id}"))
            .io_memory(config.node.io_memory_kib * 1024)
            .ring_depth(config.node.ring_depth)
            .spawn(move || {
                let ready = watch.disarm();
                async move {
                    let _alive = AliveGuard(alive);
                    crate::executor::run(id, node, channel_mesh, foreign, ready).await
                }
            })
            .map_err(|e| spawn_error(id, &e.into()))?;
        executors.push(handle);
    }
    drop(ready_tx);
    for core in 0..cores {
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok((_, Ok(()))) => {}
            Ok((core, Err(ExecutorError::NotStarted))) => {
                // Its thread ended with glommio's error: join it for that.
                let ended = executors.into_iter().nth(core).map(|e| e.join());
                let error = match ended {
                    Some(Err(e)) => std::io::Error::from(e),
                    _ => std::io::Error::other("the executor ended before it ran"),
                };
                return Err(spawn_error(core, &error));
            }
            Ok((core, Err(source))) => return Err(StartError::Executor { core, source }),
            Err(_) => return Err(StartError::NotReady { core }),
        }
    }
    drop(ws_hold);
    drop(http_hold);
    announce(&config, &node);
    tracing::info!(
        node_id = %node.node_id,
        ws = %config.ws.listen,
        http = %config.http.listen,
        cores,
        "ready"
    );
    wait_and_drain(
        Running {
            executors,
            node,
            alive: running_cores,
            cores,
            drain_trigger,
        },
        &signals,
    )
}

fn wait_and_drain(running: Running, signals: &SigSet) -> Result<(), StartError> {
    let Running {
        executors,
        node,
        alive,
        cores,
        drain_trigger,
    } = running;
    loop {
        let timeout = libc::timespec {
            tv_sec: 0,
            tv_nsec: SIGNAL_POLL_NS,
        };
        // SAFETY: sigtimedwait reads a valid, initialized sigset and timespec.
        let signal =
            unsafe { libc::sigtimedwait(signals.as_ref(), std::ptr::null_mut(), &timeout) };
        if signal == libc::SIGTERM || signal == libc::SIGINT {
            tracing::info!(
                signal = Signal::try_from(signal).map_or("?", Signal::as_str),
                connections = node.capacity.taken(),
                drain_period_ms = node.config.shutdown.drain_period_ms,
                "drain started"
            );
            break;
        }
        if alive.load(Ordering::SeqCst) < cores {
            tracing::error!("an executor stopped unexpectedly; exiting");
            std::process::exit(1);
        }
    }
    let started = std::time::Instant::now();
    let connections = node.capacity.taken();
    node.draining.store(true, Ordering::SeqCst);
    drain_trigger.close();
    for executor in executors {
        let _ = executor.join();
    }
    // The executors are gone, so this is the last reference to the node.
    if let Ok(Node {
        mesh: Some(mesh), ..
    }) = Arc::try_unwrap(node)
    {
        mesh.shutdown();
    }
    tracing::info!(
        connections,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "drained, exiting"
    );
    Ok(())
}
