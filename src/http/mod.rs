//! The per-core HTTP port: hyper 1.x serving HTTP/1.1 on glommio streams
//! (a permit per connection, taken before accept), routed to the push API
//! in [`api`].

pub mod api;
pub mod body;

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use hyper::service::service_fn;

use crate::core::Core;

/// Largest request head hyper buffers (request line and headers).
const HTTP_HEAD_BYTES_MAX: usize = 16 * 1024;

/// Bytes read from an HTTP connection per read call.
const HTTP_READ_CHUNK_BYTES: usize = 4 * 1024;

/// A glommio stream as hyper's I/O.
struct HyperStream(TcpStream);

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
        match Pin::new(&mut self.0).poll_read(cx, slice) {
            Poll::Ready(Ok(n)) => {
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
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// Accepts HTTP connections on this core until cancelled.
pub async fn serve(core: Rc<Core>, listener: TcpListener) {
    let permits = Rc::new(Semaphore::new(
        core.config.limits.http_connections_per_core_max as u64,
    ));
    loop {
        let Ok(permit) = permits.acquire_static_permit(1).await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                eprintln!("corecast: core {}: HTTP accept failed: {e}", core.id);
                drop(permit);
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let core = core.clone();
        glommio::spawn_local(async move {
            let idle = Duration::from_millis(core.config.limits.http_idle_timeout_ms);
            let last_request = Rc::new(Cell::new(Instant::now()));
            let seen = last_request.clone();
            let service = service_fn(move |req| {
                let core = core.clone();
                seen.set(Instant::now());
                async move { Ok::<_, std::convert::Infallible>(api::handle(core, req).await) }
            });
            let serve = hyper::server::conn::http1::Builder::new()
                .max_buf_size(HTTP_HEAD_BYTES_MAX)
                .serve_connection(HyperStream(stream), service);
            // hyper's own header timeout needs a Send timer, which glommio's
            // is not: a watchdog ends a connection that has not started a
            // request for `idle` (a slowloris client, a forgotten keep-alive).
            let watchdog = async {
                loop {
                    let due = last_request.get() + idle;
                    if Instant::now() >= due {
                        return;
                    }
                    glommio::timer::sleep(due - Instant::now()).await;
                }
            };
            futures_lite::future::or(async { drop(serve.await) }, watchdog).await;
            drop(permit);
        })
        .detach();
    }
}
