//! One executor's main, from joining the channel mesh to the end of its
//! drain: it builds this core's [`Hub`] and [`Core`], spawns the inbox
//! readers (other cores, the cluster mesh) and the heartbeat, binds its
//! `SO_REUSEPORT` listeners, spawns the WebSocket accept loop and the HTTP
//! server, reports ready, and on the drain signal stops them in order:
//! accepting first, then the sessions (1001), then HTTP.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::{Full, MeshBuilder};

use crate::core::{Core, CoreMsg};
use crate::limits::TICK_MS;
use crate::node::Node;
use crate::session::hub::Hub;

/// Why an executor could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// Its thread ended before the executor ran (glommio's error is the
    /// thread's result).
    #[error("the executor ended before it ran")]
    NotStarted,
    #[error("cannot join the channel mesh between cores: {0}")]
    ChannelMesh(String),
    #[error("cannot bind the {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What an executor reports once: its core id and whether it listens.
pub type Ready = std::sync::mpsc::Sender<(usize, Result<(), ExecutorError>)>;

/// Runs core `id` until the node drains. Start-up failures are reported on
/// `ready`, not panicked.
pub async fn run(
    id: usize,
    node: Arc<Node>,
    mesh: MeshBuilder<CoreMsg, Full>,
    foreign: async_channel::Receiver<CoreMsg>,
    ready: Ready,
) {
    let (senders, mut receivers) = match mesh.join().await {
        Ok(joined) => joined,
        Err(e) => {
            let _ = ready.send((id, Err(ExecutorError::ChannelMesh(e.to_string()))));
            return;
        }
    };
    let config = node.config.clone();
    let hub = Rc::new(Hub::new(id, node));
    let core = Rc::new(Core::new(hub.clone(), senders));

    for (peer, receiver) in receivers.streams() {
        let core = core.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = receiver.recv().await {
                core.node.links.between(peer, id).release(msg.weight());
                core.handle(msg);
            }
        })
        .detach();
    }
    {
        let core = core.clone();
        glommio::spawn_local(async move {
            while let Ok(msg) = foreign.recv().await {
                core.node.links.from_mesh(id).release(msg.weight());
                core.handle(msg);
            }
        })
        .detach();
    }
    spawn_heartbeat(hub.clone());
    glommio::spawn_local(core.clone().run_markers()).detach();

    let bind = |what, addr, backlog| {
        crate::listener::bind_reuseport(addr, backlog).map_err(|source| ExecutorError::Bind {
            what,
            addr,
            source,
        })
    };
    let listeners = bind("WebSocket", config.ws.listen, config.ws.backlog).and_then(|ws| {
        bind("HTTP", config.http.listen, config.http.backlog).map(|http| (ws, http))
    });
    let (ws_listener, http_listener) = match listeners {
        Ok(listeners) => listeners,
        Err(e) => {
            let _ = ready.send((id, Err(e)));
            return;
        }
    };
    let ws_task = glommio::spawn_local(crate::accept::accept_websockets(core.clone(), ws_listener));
    let http_task = glommio::spawn_local(crate::http::serve(core.clone(), http_listener));
    let _ = ready.send((id, Ok(())));

    // Err once the node closes the signal; nothing is ever sent on it.
    let _ = hub.node.drain_signal.recv().await;
    ws_task.cancel().await;
    hub.drain().await;
    http_task.cancel().await;
}

/// Advances the hub's tick every [`TICK_MS`], on a schedule that does not
/// drift with the time each tick takes.
fn spawn_heartbeat(hub: Rc<Hub>) {
    glommio::spawn_local(async move {
        let start = Instant::now();
        loop {
            let next = hub.tick() + 1;
            let due = start + Duration::from_millis(TICK_MS * u64::from(next));
            glommio::timer::sleep(due.saturating_duration_since(Instant::now())).await;
            hub.on_tick(next);
        }
    })
    .detach();
}
