//! The per-core HTTP port: hyper 1.x serving HTTP/1.1 on glommio streams
//! (a permit per connection, taken before accept, and a cap per source
//! address), each connection watched by the rules of [`slots`], routed to
//! the push API in [`api`] with the budgets of [`budget`].

pub mod api;
pub mod body;
pub mod budget;
pub mod slots;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use hyper::header::{CONNECTION, HeaderValue};
use hyper::service::service_fn;

use crate::core::Core;
use crate::metrics::Limit;
use slots::{CloseReason, ConnClock, SlotLimits, Verdict};

/// `Retry-After` of the 503 sent to an address over its connection cap.
const PER_ADDRESS_RETRY_AFTER_SECS: u64 = 1;

/// How long a refused connection's request bytes are read and thrown away
/// after the 503, so that closing does not reset the connection (and the
/// answer with it) while the client is still sending.
const REFUSAL_LINGER_MS: u64 = 200;

/// Refused connections lingering at once per core. Refusals hold no
/// connection permit; past this many, a refusal is written and the socket
/// closed at once (the client may then see a reset instead of the 503).
const REFUSALS_LINGERING_PER_CORE_MAX: u64 = 64;

/// Largest request head hyper buffers (request line and headers).
const HTTP_HEAD_BYTES_MAX: usize = 16 * 1024;

/// Bytes read from an HTTP connection per read call.
const HTTP_READ_CHUNK_BYTES: usize = 4 * 1024;

/// A glommio stream as hyper's I/O; every byte moved is noted on the
/// connection's clock.
struct HyperStream {
    stream: TcpStream,
    clock: Rc<ConnClock>,
}

impl hyper::rt::Read for HyperStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: the slice is zeroed before it is handed out as initialized
        // memory, and `advance` is called only with what was read into it.
        // At most HTTP_READ_CHUNK_BYTES are zeroed and read per call: push
        // requests are small, and zeroing hyper's whole buffer per read
        // showed in profiles.
        let slice = unsafe {
            let uninit = buf.as_mut();
            let len = uninit.len().min(HTTP_READ_CHUNK_BYTES);
            uninit.as_mut_ptr().write_bytes(0, len);
            std::slice::from_raw_parts_mut(uninit.as_mut_ptr().cast::<u8>(), len)
        };
        match Pin::new(&mut self.stream).poll_read(cx, slice) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.clock.on_read(Instant::now());
                }
                // SAFETY: `n` bytes were written by the read above.
                unsafe { buf.advance(n) };
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Write for HyperStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            self.clock.on_write(Instant::now());
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_close(cx)
    }
}

/// One core's state of the HTTP port: what its connections and requests
/// share, touched by this core only.
pub struct HttpCore {
    pub budgets: RefCell<budget::PushBudgets>,
    pub scrape: api::ScrapeCache,
    /// Open connections per source address (entries with zero are removed).
    addresses: RefCell<HashMap<IpAddr, usize>>,
}

impl HttpCore {
    fn new(core: &Core) -> Self {
        let limits = &core.config.limits;
        Self {
            budgets: RefCell::new(budget::PushBudgets::new(
                limits.key_pushes_per_sec_max,
                limits.node_pushes_per_sec_max,
                core.node.api_keys.len(),
                core.cores,
                Instant::now(),
            )),
            scrape: api::ScrapeCache::default(),
            addresses: RefCell::new(HashMap::new()),
        }
    }
}

/// A connection's place in its address's count; given back on drop.
struct AddressSlot {
    http: Rc<HttpCore>,
    address: IpAddr,
}

impl AddressSlot {
    /// Counts a connection from `address`; `None` (and nothing counted) when
    /// the address already holds `max` connections on this core.
    fn take(http: &Rc<HttpCore>, address: IpAddr, max: usize) -> Option<Self> {
        let mut addresses = http.addresses.borrow_mut();
        let count = addresses.entry(address).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Self {
            http: http.clone(),
            address,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut addresses = self.http.addresses.borrow_mut();
        if let Some(count) = addresses.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                addresses.remove(&self.address);
            }
        }
    }
}

/// The answer to a connection over its address's cap.
fn too_many_connections() -> Vec<u8> {
    let body = serde_json::json!({"error": {
        "code": "too_many_connections",
        "message": "this address holds http.connections_per_address_per_core_max connections; retry later",
    }})
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Retry-After: {PER_ADDRESS_RETRY_AFTER_SECS}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers 503 without waiting on the client; with `linger`, then reads
/// and drops what it sends for a moment so that the close does not reset
/// the answer away.
async fn refuse(mut stream: TcpStream, linger: bool) {
    let fd = stream.as_raw_fd();
    let _ = nix::sys::socket::send(
        fd,
        &too_many_connections(),
        nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
    );
    if !linger {
        return;
    }
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    let linger = async {
        let mut sink = [0u8; 1024];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    futures_lite::future::or(linger, async {
        glommio::timer::sleep(Duration::from_millis(REFUSAL_LINGER_MS)).await;
    })
    .await;
}

/// Accepts HTTP connections on this core until cancelled.
pub async fn serve(core: Rc<Core>, listener: TcpListener) {
    let permits = Rc::new(Semaphore::new(
        core.config.limits.http_connections_per_core_max as u64,
    ));
    let http = Rc::new(HttpCore::new(&core));
    let per_address_max = core.config.http.connections_per_address_per_core_max;
    let lingering = Rc::new(Semaphore::new(REFUSALS_LINGERING_PER_CORE_MAX));
    let mut accept_errors = crate::logging::Throttle::default();
    loop {
        let Ok(permit) = permits.acquire_static_permit(1).await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                if let Some(held_back) = accept_errors.allow(std::time::Instant::now()) {
                    tracing::error!(core = core.id, error = %e, held_back, "HTTP accept failed");
                }
                drop(permit);
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let address = stream
            .peer_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let Some(slot) = AddressSlot::take(&http, address, per_address_max) else {
            core.metrics.refused(Limit::HttpConnectionsPerAddress);
            drop(permit);
            match lingering.try_acquire_static_permit(1) {
                Ok(linger) => {
                    glommio::spawn_local(async move {
                        refuse(stream, true).await;
                        drop(linger);
                    })
                    .detach();
                }
                Err(_) => refuse(stream, false).await,
            }
            continue;
        };
        let core = core.clone();
        let http = http.clone();
        glommio::spawn_local(async move {
            serve_connection(core, http, stream).await;
            drop(slot);
            drop(permit);
        })
        .detach();
    }
}

/// Marks the clock's request answered when the API's future ends, whether
/// it finished or was dropped.
struct Answered(Rc<ConnClock>);

impl Drop for Answered {
    fn drop(&mut self) {
        self.0.on_answered();
    }
}

/// Serves one connection until the client closes it or the watchdog ends it
/// (see [`slots`]).
async fn serve_connection(core: Rc<Core>, http: Rc<HttpCore>, stream: TcpStream) {
    let limits = SlotLimits::from_config(&core.config.http, &core.config.limits);
    let clock = Rc::new(ConnClock::new(Instant::now()));
    let service = {
        let clock = clock.clone();
        let core = core.clone();
        service_fn(move |req| {
            let last = clock.on_request(Instant::now(), &limits);
            let answered = Answered(clock.clone());
            let core = core.clone();
            let http = http.clone();
            async move {
                let mut answer = api::handle(core, http, req).await;
                if last {
                    answer
                        .headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                drop(answered);
                Ok::<_, std::convert::Infallible>(answer)
            }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .max_buf_size(HTTP_HEAD_BYTES_MAX)
        .serve_connection(
            HyperStream {
                stream,
                clock: clock.clone(),
            },
            service,
        );
    let mut connection = std::pin::pin!(connection);
    let mut retiring = false;
    loop {
        let wait_until = match clock.verdict(Instant::now(), &limits, retiring) {
            Verdict::WaitUntil(at) => at,
            Verdict::Retire => {
                // hyper answers what is in flight, then closes (at once when
                // nothing is).
                connection.as_mut().graceful_shutdown();
                retiring = true;
                continue;
            }
            Verdict::Close(reason) => {
                core.metrics.refused(match reason {
                    CloseReason::HeaderTimeout => Limit::HttpHeaderTimeout,
                    CloseReason::Idle => Limit::HttpIdleTimeout,
                });
                return;
            }
        };
        let ended = futures_lite::future::or(async { Some(connection.as_mut().await) }, async {
            glommio::timer::sleep(wait_until.saturating_duration_since(Instant::now())).await;
            None
        })
        .await;
        if ended.is_some() {
            return;
        }
    }
}
