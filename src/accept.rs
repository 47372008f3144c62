//! The WebSocket accept loop of one core and each handshake to its end:
//! a handshake slot (bounded per core and per source address, a 503 with
//! `Retry-After` at once when none is free, so nothing waits in the
//! kernel's backlog), the upgrade request read under two deadlines (the
//! request line, then the whole head), the token, drain and capacity
//! checks, the refusal written raw when any fails, and the hand-off of the
//! socket (with its connection slot) to the user's home core. In echo mode
//! (`[ws] echo`, loopback only) no token is asked for: each connection is
//! a user of its own, named after its source address and port.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use nix::sys::socket::MsgFlags;

use crate::auth::{Claims, TokenError};
use crate::core::{Core, CoreMsg};
use crate::metrics::{HandshakeOutcome, Limit};
use crate::node::Slot;
use crate::push::home_core;
use crate::session::connection::{self, Opening};
use crate::ws::assets::{self, Asset, AssetRequest, DemoPage};
use crate::ws::frame::{self, CloseCode};
use crate::ws::handshake::{self, HandshakeError, UpgradeRequest};

/// Handshakes one core works on at once; past it a connection is answered
/// 503 with `Retry-After` at once.
pub const HANDSHAKES_IN_FLIGHT_PER_CORE: usize = 512;

/// Bytes of early input read and dropped before a refused connection is
/// closed, so that the close sends a FIN after the answer, not a reset.
const REFUSAL_DRAIN_BYTES: usize = 4096;

/// Why no handshake slot was free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// The core works on its maximum of handshakes.
    Core,
    /// The source address has its share of this core's handshakes.
    Address,
}

/// This core's handshakes in progress, in all and per source address.
#[derive(Debug)]
pub struct HandshakeSlots {
    in_flight: Cell<usize>,
    max: usize,
    per_address: RefCell<HashMap<IpAddr, usize>>,
    per_address_max: usize,
}

impl HandshakeSlots {
    /// `per_address_max` is this core's share of the node-wide cap.
    pub fn new(max: usize, per_address_max: usize) -> Rc<Self> {
        Rc::new(Self {
            in_flight: Cell::new(0),
            max,
            per_address: RefCell::default(),
            per_address_max: per_address_max.max(1),
        })
    }

    /// Takes a slot for a handshake from `addr`.
    pub fn try_take(self: &Rc<Self>, addr: IpAddr) -> Result<HandshakeSlot, NoSlot> {
        if self.in_flight.get() >= self.max {
            return Err(NoSlot::Core);
        }
        let mut per_address = self.per_address.borrow_mut();
        let taken = per_address.entry(addr).or_insert(0);
        if *taken >= self.per_address_max {
            return Err(NoSlot::Address);
        }
        *taken += 1;
        self.in_flight.set(self.in_flight.get() + 1);
        Ok(HandshakeSlot {
            slots: self.clone(),
            addr,
        })
    }

    /// Handshakes in progress.
    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// Source addresses with a handshake in progress.
    pub fn addresses(&self) -> usize {
        self.per_address.borrow().len()
    }
}

/// One handshake in progress; its slot is freed when dropped.
#[derive(Debug)]
pub struct HandshakeSlot {
    slots: Rc<HandshakeSlots>,
    addr: IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.slots.in_flight.set(self.slots.in_flight.get() - 1);
        let mut per_address = self.slots.per_address.borrow_mut();
        if let Some(taken) = per_address.get_mut(&self.addr) {
            *taken -= 1;
            if *taken == 0 {
                per_address.remove(&self.addr);
            }
        }
    }
}

/// Bytes read from a handshaking socket per read call.
const HANDSHAKE_READ_CHUNK_BYTES: usize = 1024;

/// Pause after a failed accept (EMFILE and friends) instead of spinning.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Accepts WebSocket connections on this core until cancelled.
pub async fn accept_websockets(core: Rc<Core>, listener: TcpListener) {
    let limits = &core.config.limits;
    let slots = HandshakeSlots::new(
        HANDSHAKES_IN_FLIGHT_PER_CORE,
        limits.handshakes_per_address_max.div_ceil(core.cores),
    );
    if core.config.ws.echo && core.id == 0 {
        tracing::warn!(
            listen = %core.config.ws.listen,
            "ws.echo is on (conformance tests only, never in production): \
             data messages are echoed and no token is checked"
        );
    }
    let mut accept_errors = crate::logging::Throttle::default();
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                if let Some(held_back) = accept_errors.allow(Instant::now()) {
                    tracing::error!(
                        core = core.id,
                        error = %e,
                        held_back,
                        "WebSocket accept failed"
                    );
                }
                glommio::timer::sleep(ACCEPT_RETRY_PAUSE).await;
                continue;
            }
        };
        let Ok(peer) = stream.peer_addr() else {
            continue; // gone already
        };
        match slots.try_take(peer.ip()) {
            Ok(slot) => {
                let core = core.clone();
                glommio::spawn_local(async move {
                    handshake(&core, stream, peer).await;
                    drop(slot);
                })
                .detach();
            }
            Err(no_slot) => {
                let (limit, why) = match no_slot {
                    NoSlot::Core => (Limit::HandshakesInFlight, " on this core"),
                    NoSlot::Address => (Limit::HandshakesPerAddress, " from this address"),
                };
                core.metrics.refused(limit);
                drain_early_input(&stream);
                refuse(&core, &stream, &HandshakeError::Busy(why));
            }
        }
    }
}

/// How long a client may take to read the browser client's module or the
/// demo page.
const ASSET_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Lifetime of the token minted into each demo page.
const DEMO_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Answers a request for the browser client or the demo page, then closes
/// the connection (a client that does not read it is dropped after
/// [`ASSET_WRITE_TIMEOUT`], so it cannot hold the handshake slot).
async fn serve_asset(core: &Core, mut stream: TcpStream, asset: &AssetRequest) {
    let response = match asset.asset {
        Asset::Module => assets::response(asset),
        Asset::DemoPage => demo_page(core, asset),
    };
    let write = async {
        let _ = stream.write_all(&response).await;
        let _ = stream.close().await;
    };
    futures_lite::future::or(write, glommio::timer::sleep(ASSET_WRITE_TIMEOUT)).await;
}

/// The demo page (dev mode only: [`read_upgrade`] asks for it only then)
/// with a token for [`assets::DEMO_UID`] minted now with the node's
/// generated secret.
fn demo_page(core: &Core, asset: &AssetRequest) -> Vec<u8> {
    let auth = &core.config.auth;
    let ttl = DEMO_TOKEN_TTL.min(Duration::from_millis(auth.token_ttl_max_ms));
    let token = core
        .node
        .tokens
        .mint(assets::DEMO_UID, None, Some("demo".into()), ttl);
    let api_key = auth
        .api_key_generated
        .then(|| auth.api_keys.first().map(String::as_str))
        .flatten();
    DemoPage::new(assets::DEMO_UID, &token, core.config.http.listen, api_key).response(asset)
}

/// How long a refusal closed in band waits for the client's close or FIN
/// before dropping the socket (so the close frame is read, not reset).
const IN_BAND_REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Refuses a browser's upgrade for its token: answers 101, then closes at
/// once with 4003 (expired: refresh and reconnect) or 4004 (invalid: do
/// not), the reason being the token error's code. A browser sees only
/// close codes, never the status of a refused upgrade.
async fn refuse_in_band(core: &Core, mut stream: TcpStream, accept: &str, error: &TokenError) {
    core.metrics.handshake(HandshakeOutcome::Unauthorized);
    core.hub.count_refusal(error.code());
    let code = match error {
        TokenError::Expired => CloseCode::TokenExpired,
        _ => CloseCode::TokenInvalid,
    };
    let mut answer = handshake::switching_protocols(accept);
    answer.extend_from_slice(&frame::close(code, error.code()));
    let fd = stream.as_raw_fd();
    let _ = nix::sys::socket::send(fd, &answer, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL);
    let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Write);
    let mut sink = [0u8; 256];
    let drained = async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    futures_lite::future::or(drained, glommio::timer::sleep(IN_BAND_REFUSAL_LINGER)).await;
}

/// Reads and drops what a refused client already sent (at most
/// [`REFUSAL_DRAIN_BYTES`], without waiting).
fn drain_early_input(stream: &TcpStream) {
    let mut buf = [0u8; REFUSAL_DRAIN_BYTES];
    let _ = nix::sys::socket::recv(stream.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT);
}

/// Runs one WebSocket handshake to its end: refused with an HTTP error, or
/// opened on the user's home core.
async fn handshake(core: &Rc<Core>, mut stream: TcpStream, peer: SocketAddr) {
    core.hub.count_churn();
    let limits = &core.config.limits;
    let started = Instant::now();
    let deadlines = Deadlines {
        request_line: started
            + Duration::from_millis(
                limits
                    .handshake_request_line_timeout_ms
                    .min(limits.handshake_timeout_ms),
            ),
        head: started + core.config.handshake_timeout(),
    };
    let demo = core.config.auth.jwt_secret_generated;
    let read = read_upgrade(
        &mut stream,
        limits.handshake_header_bytes_max,
        deadlines,
        demo,
    )
    .await;
    let outcome = match read {
        Err(e) => Err(e),
        Ok(None) => {
            core.metrics.handshake(HandshakeOutcome::IoError);
            return;
        }
        Ok(Some(Incoming::Asset(asset))) => return serve_asset(core, stream, &asset).await,
        Ok(Some(Incoming::Upgrade(request))) => {
            match authorize(core, &request, peer) {
                // A browser cannot read a refused upgrade's status: it gets
                // the upgrade and a close with the reason instead.
                Err(HandshakeError::Unauthorized(error)) if request.origin.is_some() => {
                    return refuse_in_band(core, stream, &request.accept, &error).await;
                }
                admitted => admitted.map(|ok| {
                    let opening = Opening::from_query(
                        request.since.as_deref(),
                        request.rooms.as_deref(),
                        core.config.limits.max_rooms_per_user,
                    );
                    (ok, (request.accept, opening))
                }),
            }
        }
    };
    let ((claims, slot), (accept, opening)) = match outcome {
        Ok(admitted) => admitted,
        Err(error) => return refuse(core, &stream, &error),
    };
    let home = home_core(&claims.sub, core.cores);
    if home == core.id {
        connection::open(&core.hub, stream, claims, &accept, slot, opening);
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
                opening,
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
    core.hub.count_refusal(error.code());
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

/// A complete request on the WebSocket port.
enum Incoming {
    Upgrade(UpgradeRequest),
    /// `GET /corecast.js`, or `GET /` in dev mode (see [`assets`]).
    Asset(AssetRequest),
}

/// When a handshake must have sent its request line, and its whole head.
#[derive(Clone, Copy, Debug)]
struct Deadlines {
    request_line: Instant,
    head: Instant,
}

/// Reads until the upgrade request is complete, at most `max` bytes, the
/// request line by `deadlines.request_line` and the rest by
/// `deadlines.head`; `demo`: `GET /` is the demo page. `Ok(None)`: the
/// client went away.
async fn read_upgrade(
    stream: &mut TcpStream,
    max: usize,
    deadlines: Deadlines,
    demo: bool,
) -> Result<Option<Incoming>, HandshakeError> {
    // Read straight into the request buffer: a chunk array would live in
    // the handshake task's allocation, and a bigger transient task leaves
    // bigger holes between the long-lived connection objects (heaptrack
    // showed identical live objects per connection, 1,832-byte handshake
    // tasks and ~20 bytes more RSS per idle connection than 1,456-byte ones).
    let mut buf: Vec<u8> = Vec::with_capacity(HANDSHAKE_READ_CHUNK_BYTES.min(max));
    loop {
        let len = buf.len();
        let room = (max - len).min(HANDSHAKE_READ_CHUNK_BYTES);
        if room == 0 {
            return Err(HandshakeError::TooLarge(max));
        }
        let line_done = buf.windows(2).any(|w| w == b"\r\n");
        let due = if line_done {
            deadlines.head
        } else {
            deadlines.request_line.min(deadlines.head)
        };
        buf.resize(len + room, 0);
        let read =
            futures_lite::future::or(async { Some(stream.read(&mut buf[len..]).await) }, async {
                glommio::timer::sleep(due.saturating_duration_since(Instant::now())).await;
                None
            })
            .await;
        let n = match read {
            None => return Err(HandshakeError::Timeout),
            Some(Ok(0)) | Some(Err(_)) => return Ok(None),
            Some(Ok(n)) => n,
        };
        buf.truncate(len + n);
        if let Some(asset) = assets::asset_request(&buf, demo) {
            return Ok(Some(Incoming::Asset(asset)));
        }
        if let Some(request) = handshake::parse_upgrade(&buf, max)? {
            return Ok(Some(Incoming::Upgrade(request)));
        }
    }
}

/// Token, drain and capacity checks; a connection slot on success. In
/// echo mode the token is not looked at: the claims are [`echo_claims`].
fn authorize(
    core: &Core,
    request: &UpgradeRequest,
    peer: SocketAddr,
) -> Result<(Claims, Slot), HandshakeError> {
    handshake::check_origin(request.origin.as_deref(), &core.config.ws.allowed_origins)?;
    let claims = if core.config.ws.echo {
        echo_claims(peer)
    } else {
        let token = request
            .token
            .as_deref()
            .ok_or(HandshakeError::Unauthorized(TokenError::Missing))?;
        core.node
            .tokens
            .verify(token, core.config.limits.max_rooms_per_user)?
    };
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

/// The claims of an echo-mode connection: a uid of its own (from its source
/// address and port, unique among open connections), so that
/// `max_channels_per_user` never closes one conformance case for another
/// and the cases spread over the cores; no rooms, no expiry.
fn echo_claims(peer: SocketAddr) -> Claims {
    Claims {
        sub: format!("echo-{peer}"),
        exp: u64::MAX,
        rooms: None,
        device: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_echo_connection_is_a_user_of_its_own() {
        let a = echo_claims("127.0.0.1:40000".parse().unwrap());
        let b = echo_claims("127.0.0.1:40001".parse().unwrap());
        assert_ne!(a.sub, b.sub);
        assert_eq!(a.sub, "echo-127.0.0.1:40000");
        assert!(a.rooms.is_none() && a.device.is_none());
        assert_eq!(a.exp, u64::MAX, "an echo connection never expires");
    }

    fn addr(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn slots_are_capped_per_address_and_per_core() {
        let slots = HandshakeSlots::new(3, 2);
        let a1 = slots.try_take(addr(1)).expect("first from .1");
        let _a2 = slots.try_take(addr(1)).expect("second from .1");
        assert_eq!(slots.try_take(addr(1)).unwrap_err(), NoSlot::Address);
        let _b1 = slots
            .try_take(addr(2))
            .expect("another address has its own share");
        assert_eq!(slots.try_take(addr(3)).unwrap_err(), NoSlot::Core);
        assert_eq!(slots.in_flight(), 3);
        drop(a1);
        let _a3 = slots.try_take(addr(1)).expect("a freed slot is free again");
    }

    #[test]
    fn a_finished_handshake_forgets_its_address() {
        let slots = HandshakeSlots::new(8, 8);
        let slot = slots.try_take(addr(9)).expect("slot");
        assert_eq!(slots.addresses(), 1);
        drop(slot);
        assert_eq!((slots.in_flight(), slots.addresses()), (0, 0));
    }
}
