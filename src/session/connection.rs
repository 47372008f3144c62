//! The task of one WebSocket connection, written as a hand-rolled future so
//! that an idle connection holds no buffer: a read buffer is borrowed from
//! the core's pool only for the duration of a `poll_read` that finds bytes,
//! and returned before the task goes back to sleep. The same task flushes
//! the channel's outbound queue when delivery left bytes behind.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_lite::AsyncRead;
use glommio::net::TcpStream;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::core::Core;
use crate::metrics::Limit;
use crate::session::channel::{Channel, ChannelState};
use crate::session::disconnect::DisconnectReason;
use crate::ws::frame::{self, FrameError};
use crate::ws::message::{self, ClientMessage, MessageError};

/// Reads one poll may do before yielding to the core's other tasks.
const READS_PER_POLL: usize = 16;

/// Bytes of a frame or message that arrived in pieces. Exists only while
/// a partial frame or a fragmented message is pending.
#[derive(Debug, Default)]
struct Partial {
    /// Undecoded bytes (a frame cut by the read boundary).
    pending: Vec<u8>,
    /// A fragmented data message being assembled: (is_text, payload).
    message: Option<(bool, Vec<u8>)>,
}

/// One connection's task.
pub struct Connection {
    core: Rc<Core>,
    channel: Rc<Channel>,
    stream: TcpStream,
    partial: Option<Box<Partial>>,
    write_shut: bool,
    /// The client broke the protocol: the input can no longer be framed,
    /// so the connection is failed (RFC 6455 section 7.1.7) as soon as the
    /// close frame is out, without waiting for the client's close.
    failed: bool,
}

impl Connection {
    pub fn new(core: Rc<Core>, channel: Rc<Channel>, stream: TcpStream) -> Self {
        Self {
            core,
            channel,
            stream,
            partial: None,
            write_shut: false,
            failed: false,
        }
    }

    /// Reads what the socket has; `Ready(true)` when the connection ended.
    fn poll_read_once(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut buf = self.core.pool.take();
        let read = Pin::new(&mut self.stream).poll_read(cx, &mut buf[..]);
        let ended = match read {
            Poll::Pending => {
                self.core.pool.put(buf);
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
                self.channel.last_seen_tick.set(self.core.tick());
                self.on_bytes(&mut buf[..n]);
                false
            }
        };
        self.core.pool.put(buf);
        Poll::Ready(ended)
    }

    /// Decodes and handles every whole frame in `fresh` (after any pending
    /// bytes); keeps a cut frame for the next read.
    fn on_bytes(&mut self, fresh: &mut [u8]) {
        let max = self.core.config.limits.client_message_bytes_max;
        let mut pending = self
            .partial
            .as_mut()
            .map(|p| std::mem::take(&mut p.pending))
            .unwrap_or_default();
        let data: &mut [u8] = if pending.is_empty() {
            fresh
        } else {
            pending.extend_from_slice(fresh);
            &mut pending
        };
        let mut at = 0;
        while at < data.len() && !matches!(self.channel.state(), ChannelState::Dead(_)) {
            match frame::decode_client_frame(&mut data[at..], max) {
                Ok(Some((frame, used))) => {
                    let (opcode, is_final) = (frame.opcode, frame.is_final);
                    // Copy out what outlives the borrow only when needed.
                    let outcome = self.on_frame(opcode, is_final, frame.payload);
                    at += used;
                    if let Err(error) = outcome {
                        self.fail(error);
                        return;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    self.fail(error);
                    return;
                }
            }
        }
        let rest = &data[at..];
        if rest.is_empty() {
            if self.partial.as_ref().is_some_and(|p| p.message.is_none()) {
                self.partial = None;
            }
        } else {
            let rest = rest.to_vec();
            self.partial.get_or_insert_with(Box::default).pending = rest;
        }
    }

    fn fail(&mut self, error: FrameError) {
        let reason = DisconnectReason::from_frame_error(&error);
        if reason == DisconnectReason::MessageTooBig {
            self.core.metrics.refused(Limit::ClientMessageBytes);
        }
        self.partial = None;
        self.failed = true;
        self.channel.close(reason, self.core.tick(), false);
    }

    /// Reads and discards what the client has already sent, so that closing
    /// the socket sends a FIN after the close frame rather than a reset.
    fn discard_pending_input(&self) {
        let mut buf = self.core.pool.take();
        while let Ok(n) = nix::sys::socket::recv(
            std::os::fd::AsRawFd::as_raw_fd(&self.stream),
            &mut buf,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ) {
            if n == 0 {
                break;
            }
        }
        self.core.pool.put(buf);
    }

    fn on_frame(
        &mut self,
        opcode: OpCode,
        is_final: bool,
        payload: &[u8],
    ) -> Result<(), FrameError> {
        if !self.channel.is_open() {
            // Closing: the client's close frame completes the handshake;
            // anything else it sends meanwhile is dropped.
            if opcode == OpCode::Control(Control::Close) {
                self.channel.kill(DisconnectReason::ClientClose);
            }
            return Ok(());
        }
        match opcode {
            OpCode::Control(Control::Ping) => {
                let pong = frame::encode(OpCode::Control(Control::Pong), payload);
                self.channel.send_pong_or_ping(&pong);
            }
            OpCode::Control(Control::Pong) => {}
            OpCode::Control(Control::Close) => {
                let code = frame::parse_close(payload)?;
                self.channel.close_echo(code, self.core.tick());
            }
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                return Err(FrameError::ReservedOpcode);
            }
            OpCode::Data(Data::Continue) => {
                let max = self.core.config.limits.client_message_bytes_max;
                let partial = self.partial.as_mut().ok_or(FrameError::BadFragment)?;
                let (is_text, mut body) = partial.message.take().ok_or(FrameError::BadFragment)?;
                if body.len() + payload.len() > max {
                    return Err(FrameError::TooBig((body.len() + payload.len()) as u64));
                }
                body.extend_from_slice(payload);
                if is_final {
                    self.on_message(is_text, &body)?;
                } else {
                    self.partial.get_or_insert_with(Box::default).message = Some((is_text, body));
                }
            }
            OpCode::Data(kind) => {
                if self.partial.as_ref().is_some_and(|p| p.message.is_some()) {
                    return Err(FrameError::BadFragment);
                }
                let is_text = kind == Data::Text;
                if is_final {
                    self.on_message(is_text, payload)?;
                } else {
                    self.partial.get_or_insert_with(Box::default).message =
                        Some((is_text, payload.to_vec()));
                }
            }
        }
        Ok(())
    }

    /// A whole client message: rate-limited, then join/leave or an error.
    fn on_message(&mut self, is_text: bool, body: &[u8]) -> Result<(), FrameError> {
        if is_text && std::str::from_utf8(body).is_err() {
            return Err(FrameError::InvalidUtf8);
        }
        let tick = self.core.tick();
        let limit = self.core.config.limits.client_messages_per_sec_max;
        let (window, count) = self.channel.rate_window.get();
        let count = if window == tick { count + 1 } else { 1 };
        self.channel.rate_window.set((tick, count));
        if count > limit.saturating_mul(2) {
            self.core.metrics.refused(Limit::ClientMessageRate);
            self.channel
                .close(DisconnectReason::RateLimited, tick, false);
            return Ok(());
        }
        if count > limit {
            self.core.metrics.refused(Limit::ClientMessageRate);
            if count == limit + 1 {
                self.reply_error(&MessageError::RateLimited);
            }
            return Ok(());
        }
        if !is_text {
            self.reply_error(&MessageError::Binary);
            return Ok(());
        }
        let result = message::parse(body).and_then(|msg| self.apply(msg));
        match result {
            Ok(ack) => self.reply(&ack),
            Err(error) => self.reply_error(&error),
        }
        Ok(())
    }

    fn apply(&self, msg: ClientMessage) -> Result<String, MessageError> {
        let uid = self.channel.uid.clone();
        match msg {
            ClientMessage::Join(room) => {
                let permitted = self.core.config.ws.free_join || self.channel.permits(&room);
                if !permitted {
                    return Err(MessageError::Forbidden);
                }
                self.core.join_room(&uid, &room)?;
                Ok(serde_json::json!({"type": "joined", "room": room}).to_string())
            }
            ClientMessage::Leave(room) => {
                self.core.leave_room(&uid, &room);
                Ok(serde_json::json!({"type": "left", "room": room}).to_string())
            }
        }
    }

    fn reply(&self, text: &str) {
        let caps = self.core.queue_caps();
        let bytes: Bytes = frame::encode_text(text);
        if self.channel.send(&bytes, caps) == crate::session::channel::Sent::Overflow {
            self.channel
                .close(DisconnectReason::SlowConsumer, self.core.tick(), true);
        }
    }

    fn reply_error(&self, error: &MessageError) {
        self.reply(&error.to_json());
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
                ChannelState::Closing { .. } if !this.write_shut && this.channel.flushed() => {
                    // Close frame is on the wire: send FIN, then wait for the
                    // client's FIN (or the wheel's grace) before dropping.
                    let _ = nix::sys::socket::shutdown(
                        std::os::fd::AsRawFd::as_raw_fd(&this.stream),
                        nix::sys::socket::Shutdown::Write,
                    );
                    this.write_shut = true;
                    if this.failed {
                        this.discard_pending_input();
                        this.channel.kill(DisconnectReason::ProtocolError);
                        return Poll::Ready(());
                    }
                    this.core.watch_closing(&this.channel);
                }
                _ => {}
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
        self.core.connection_ended(&self.channel, reason);
    }
}
