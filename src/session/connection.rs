//! The task of one WebSocket connection: the I/O shell around its
//! [`Protocol`]. Written as a hand-rolled future so that an idle connection
//! holds no buffer: a read buffer is borrowed from the hub's pool only for
//! the duration of a `poll_read` that finds bytes, and returned before the
//! task goes back to sleep. The same task flushes the channel's outbound
//! queue when delivery left bytes behind.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_lite::AsyncRead;
use glommio::net::TcpStream;

use crate::auth::Claims;
use crate::metrics::HandshakeOutcome;
use crate::node::Slot;
use crate::session::channel::{Channel, ChannelState, Sent};
use crate::session::disconnect::DisconnectReason;
use crate::session::hub::Hub;
use crate::session::protocol::{Action, AfterClose, Protocol, ProtocolLimits};
pub use crate::session::stream::Opening;
use crate::ws::frame;
use crate::ws::handshake::HandshakeError;
use crate::ws::message::MessageError;

/// Reads one poll may do before yielding to the core's other tasks.
const READS_PER_POLL: usize = 16;

/// Opens an authenticated connection on its home core: adds it to the hub
/// (which queues the 101) and starts its task; `slot` is held until the
/// connection's channel is dropped. While the node drains it is refused
/// with 503 instead. A connection that opened with `since` is registered
/// once this core has caught up with it, with its replay queued first.
pub fn open(
    hub: &Rc<Hub>,
    stream: TcpStream,
    claims: Claims,
    accept: &str,
    slot: Slot,
    opening: Opening,
) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    if hub.is_draining() {
        let _ = nix::sys::socket::send(
            fd,
            &HandshakeError::Draining.response(),
            nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        );
        hub.metrics.handshake(HandshakeOutcome::OverCapacity);
        return;
    }
    let Some(since) = opening.since else {
        let channel = hub.add(fd, claims, accept, slot, &opening.rooms);
        start(hub, channel, stream);
        return;
    };
    let hub = hub.clone();
    let accept = accept.to_owned();
    glommio::spawn_local(async move {
        if let Ok(position) = &since {
            hub.wait_until_caught_up(&claims.sub, position).await;
        }
        // Registration and the replay in one step: see `stream`.
        let channel = hub.add(fd, claims, &accept, slot, &opening.rooms);
        hub.replay(&channel, &since);
        start(&hub, channel, stream);
    })
    .detach();
}

fn start(hub: &Rc<Hub>, channel: Rc<Channel>, stream: TcpStream) {
    let task = Connection {
        protocol: Protocol::new(hub.tick()),
        hub: hub.clone(),
        channel,
        stream,
    };
    glommio::spawn_local(task).detach();
}

/// One connection's task.
pub struct Connection {
    hub: Rc<Hub>,
    channel: Rc<Channel>,
    stream: TcpStream,
    protocol: Protocol,
}

impl Connection {
    fn limits(&self) -> ProtocolLimits {
        let limits = &self.hub.config.limits;
        ProtocolLimits {
            message_bytes_max: limits.client_message_bytes_max,
            messages_per_tick_max: limits.client_messages_per_sec_max,
            echo: self.hub.config.ws.echo,
        }
    }

    /// Reads what the socket has; `Ready(true)` when the connection ended.
    fn poll_read_once(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut buf = self.hub.pool.take();
        let read = Pin::new(&mut self.stream).poll_read(cx, &mut buf[..]);
        let ended = match read {
            Poll::Pending => {
                self.hub.pool.put(buf);
                return Poll::Pending;
            }
            Poll::Ready(Ok(0)) => {
                self.channel.kill(DisconnectReason::ClientClose);
                true
            }
            Poll::Ready(Err(_)) => {
                self.channel.kill(DisconnectReason::IoError);
                true
            }
            Poll::Ready(Ok(n)) => {
                let tick = self.hub.tick();
                self.channel.last_seen_tick.set(tick);
                let limits = self.limits();
                let open = self.channel.is_open();
                let actions = self.protocol.on_bytes(&mut buf[..n], tick, open, &limits);
                for action in actions {
                    if matches!(self.channel.state(), ChannelState::Dead(_)) {
                        break;
                    }
                    self.apply(action, tick);
                }
                false
            }
        };
        self.hub.pool.put(buf);
        Poll::Ready(ended)
    }

    /// Carries out one protocol action on the channel and the hub.
    fn apply(&self, action: Action, tick: u32) {
        match action {
            Action::Pong(pong) => self.channel.send_pong(&pong),
            Action::Echo(frame) => self.send_within_caps(&frame),
            Action::Join(room) if self.channel.is_open() => {
                let permitted = self.hub.config.ws.free_join || self.channel.permits(&room);
                let joined = if permitted {
                    self.hub.join_room(&self.channel.uid, &room)
                } else {
                    Err(MessageError::Forbidden)
                };
                match joined {
                    Ok(()) => {
                        self.reply(&serde_json::json!({"type": "joined", "room": room}).to_string())
                    }
                    Err(error) => self.reply(&error.to_json()),
                }
            }
            Action::Leave(room) if self.channel.is_open() => {
                self.hub.leave_room(&self.channel.uid, &room);
                self.reply(&serde_json::json!({"type": "left", "room": room}).to_string());
            }
            Action::Join(_) | Action::Leave(_) => {}
            Action::Reject(error) => self.reply(&error.to_json()),
            Action::Reply(text) => self.reply(text),
            Action::CloseEcho(code) if self.channel.is_open() => {
                self.channel.close_echo(code, tick);
            }
            Action::CloseEcho(_) | Action::ClientClosed => {
                self.channel.kill(DisconnectReason::ClientClose);
            }
            Action::Close { reason, .. } => self.channel.close(reason, tick, false),
            Action::Refused(limit) => self.hub.metrics.refused(limit),
        }
    }

    /// Reads and discards what the client has already sent, so that closing
    /// the socket sends a FIN after the close frame rather than a reset.
    fn discard_pending_input(&self) {
        let mut buf = self.hub.pool.take();
        while let Ok(n) = nix::sys::socket::recv(
            std::os::fd::AsRawFd::as_raw_fd(&self.stream),
            &mut buf,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ) {
            if n == 0 {
                break;
            }
        }
        self.hub.pool.put(buf);
    }

    fn reply(&self, text: &str) {
        self.send_within_caps(&frame::encode_text(text));
    }

    /// Sends a frame of this connection's own (a reply, an echo) within the
    /// send-queue caps: a client that does not read them is a slow consumer.
    fn send_within_caps(&self, bytes: &Bytes) {
        if self.channel.send(bytes, self.hub.queue_caps()) == Sent::Overflow {
            self.channel
                .close(DisconnectReason::SlowConsumer, self.hub.tick(), true);
        }
    }
}

impl Future for Connection {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        for _ in 0..READS_PER_POLL {
            this.channel.set_waker(cx.waker());
            if let Poll::Ready(Err(_)) = this.channel.poll_flush(cx, &mut this.stream) {
                this.channel.kill(DisconnectReason::IoError);
            }
            match this.channel.state() {
                ChannelState::Dead(_) => return Poll::Ready(()),
                ChannelState::Closing { .. } if this.channel.flushed() => {
                    match this.protocol.on_close_flushed() {
                        AfterClose::AlreadyShut => {}
                        step => {
                            // The close frame is on the wire: send FIN.
                            let _ = nix::sys::socket::shutdown(
                                std::os::fd::AsRawFd::as_raw_fd(&this.stream),
                                nix::sys::socket::Shutdown::Write,
                            );
                            if step == AfterClose::ShutAndEnd {
                                this.discard_pending_input();
                                this.channel.kill(DisconnectReason::ProtocolError);
                                return Poll::Ready(());
                            }
                            // Wait for the client's FIN, or the wheel's grace.
                            this.hub.watch_closing(&this.channel);
                        }
                    }
                }
                _ => {}
            }
            if this.channel.over(this.hub.queue_caps()) {
                // The client does not read what it is sent: read nothing
                // more from it until the socket takes the queue (the flush
                // above wakes this task), so it cannot grow the node.
                return Poll::Pending;
            }
            match this.poll_read_once(cx) {
                Poll::Ready(true) => return Poll::Ready(()),
                Poll::Ready(false) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
        // A client that keeps sending yields to the other tasks of the core.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let reason = match self.channel.state() {
            ChannelState::Dead(reason) | ChannelState::Closing { reason, .. } => reason,
            ChannelState::Open => DisconnectReason::IoError,
        };
        self.channel.kill(reason);
        self.hub.connection_ended(&self.channel, reason);
    }
}
