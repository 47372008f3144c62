//! The WebSocket accept loop of one core and each handshake to its end:
//! a handshake permit, the upgrade request read under a deadline, the
//! token, drain and capacity checks, the refusal written raw when any
//! fails, and the hand-off of the socket (with its connection slot) to the
//! user's home core.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncReadExt;
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use nix::sys::socket::MsgFlags;

use crate::auth::{Claims, TokenError};
use crate::core::{Core, CoreMsg};
use crate::metrics::{HandshakeOutcome, Limit};
use crate::node::Slot;
use crate::push::home_core;
use crate::session::connection;
use crate::ws::handshake::{self, HandshakeError, UpgradeRequest};

/// Handshakes one core works on at once; further connections wait in the
/// kernel's accept queue (a permit is taken before accept).
pub const HANDSHAKES_IN_FLIGHT_PER_CORE: u64 = 512;

/// Bytes read from a handshaking socket per read call.
const HANDSHAKE_READ_CHUNK_BYTES: usize = 1024;

/// Pause after a failed accept (EMFILE and friends) instead of spinning.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Accepts WebSocket connections on this core until cancelled.
pub async fn accept_websockets(core: Rc<Core>, listener: TcpListener) {
    let permits = Rc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT_PER_CORE));
    loop {
        let Ok(permit) = permits.acquire_static_permit(1).await else {
            return;
        };
        match listener.accept().await {
            Ok(stream) => {
                let core = core.clone();
                glommio::spawn_local(async move {
                    handshake(&core, stream).await;
                    drop(permit);
                })
                .detach();
            }
            Err(e) => {
                eprintln!("corecast: core {}: accept failed: {e}", core.id);
                drop(permit);
                glommio::timer::sleep(ACCEPT_RETRY_PAUSE).await;
            }
        }
    }
}

/// Runs one WebSocket handshake to its end: refused with an HTTP error, or
/// opened on the user's home core.
async fn handshake(core: &Rc<Core>, mut stream: TcpStream) {
    core.hub.count_churn();
    let timeout = core.config.handshake_timeout();
    let max = core.config.limits.handshake_header_bytes_max;
    let read = futures_lite::future::or(
        async { Some(read_upgrade(&mut stream, max).await) },
        async {
            glommio::timer::sleep(timeout).await;
            None
        },
    )
    .await;
    let outcome = match read {
        None => Err(HandshakeError::Timeout),
        Some(Err(e)) => Err(e),
        Some(Ok(None)) => {
            core.metrics.handshake(HandshakeOutcome::IoError);
            return;
        }
        Some(Ok(Some(request))) => authorize(core, &request).map(|ok| (ok, request.accept)),
    };
    let ((claims, slot), accept) = match outcome {
        Ok(admitted) => admitted,
        Err(error) => return refuse(core, &stream, &error),
    };
    let home = home_core(&claims.sub, core.cores);
    if home == core.id {
        connection::open(&core.hub, stream, claims, &accept, slot);
        return;
    }
    // SAFETY: the raw fd is open for as long as `stream` lives.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    match nix::unistd::dup(borrowed) {
        Ok(fd) => {
            drop(stream);
            let msg = CoreMsg::HandOff {
                fd,
                claims,
                accept,
                slot,
            };
            // A failed send drops the message: its fd closes and its slot
            // is released.
            core.metrics.handed_off();
            core.send_to(home, msg).await;
        }
        Err(_) => core.metrics.handshake(HandshakeOutcome::IoError),
    }
}

/// Counts a refused handshake and writes its HTTP answer without waiting:
/// a client that does not read it loses it.
fn refuse(core: &Core, stream: &TcpStream, error: &HandshakeError) {
    core.metrics.handshake(error.outcome());
    match error {
        HandshakeError::TooLarge(_) => core.metrics.refused(Limit::HandshakeHeaderBytes),
        HandshakeError::Timeout => core.metrics.refused(Limit::HandshakeTimeout),
        HandshakeError::OverCapacity => core.metrics.refused(Limit::MaxConnections),
        _ => {}
    }
    let _ = nix::sys::socket::send(
        stream.as_raw_fd(),
        &error.response(),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    );
}

/// Reads until the upgrade request is complete, at most `max` bytes.
/// `Ok(None)`: the client went away.
async fn read_upgrade(
    stream: &mut TcpStream,
    max: usize,
) -> Result<Option<UpgradeRequest>, HandshakeError> {
    let mut buf: Vec<u8> = Vec::with_capacity(HANDSHAKE_READ_CHUNK_BYTES.min(max));
    let mut chunk = [0u8; HANDSHAKE_READ_CHUNK_BYTES];
    loop {
        let room = (max - buf.len()).min(chunk.len());
        if room == 0 {
            return Err(HandshakeError::TooLarge(max));
        }
        let n = match stream.read(&mut chunk[..room]).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(request) = handshake::parse_upgrade(&buf, max)? {
            return Ok(Some(request));
        }
    }
}

/// Token, drain and capacity checks; a connection slot on success.
fn authorize(core: &Core, request: &UpgradeRequest) -> Result<(Claims, Slot), HandshakeError> {
    let token = request
        .token
        .as_deref()
        .ok_or(HandshakeError::Unauthorized(TokenError::Missing))?;
    let claims = core
        .node
        .tokens
        .verify(token, core.config.limits.max_rooms_per_user)?;
    if core.is_draining() {
        return Err(HandshakeError::Draining);
    }
    let slot = core
        .node
        .capacity
        .try_take()
        .ok_or(HandshakeError::OverCapacity)?;
    Ok((claims, slot))
}
