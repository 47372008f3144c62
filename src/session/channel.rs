//! One connection's shared state (a "channel": one tab or device), held by
//! the shard for delivery and by the connection task for I/O.
//!
//! Delivery writes a frame straight to the socket with a non-blocking
//! `send`: when the socket takes it all (the usual case) nothing is queued,
//! cloned or allocated. Only a socket that is full gets a bounded queue of
//! shared frame bytes, flushed by the connection task when it is writable;
//! a queue over its frame or byte cap makes the connection a slow consumer.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use futures_lite::AsyncWrite;
use glommio::net::TcpStream;
use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, send};

use crate::session::disconnect::DisconnectReason;
use crate::ws::frame;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelState {
    Open,
    /// A close frame is queued; at `since_tick` the close began.
    Closing {
        reason: DisconnectReason,
        since_tick: u32,
    },
    /// The socket failed or the close grace ran out: the task ends.
    Dead(DisconnectReason),
}

/// The outcome of handing one frame to a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Written to the socket in full.
    Written,
    /// Queued behind earlier bytes (the socket was full).
    Queued,
    /// The channel is closing or dead: nothing sent.
    Dropped,
    /// The queue is full: the caller closes the channel as a slow consumer.
    Overflow,
}

/// What a token says besides the uid.
#[derive(Debug, Default)]
pub struct TokenExtras {
    /// Device label shown in presence.
    pub device: Option<Box<str>>,
    /// Rooms the token allows `join` for (None: the token named none).
    pub permitted_rooms: Option<Box<[Box<str>]>>,
}

/// Caps of one outbound queue.
#[derive(Clone, Copy, Debug)]
pub struct QueueCaps {
    pub frames_max: usize,
    pub bytes_max: usize,
}

#[derive(Debug)]
struct Outbound {
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// The front frame is partly on the wire: it must be finished before
    /// anything else (even a close frame) is written.
    front_started: bool,
}

/// The shared state of one WebSocket connection.
pub struct Channel {
    pub id: u64,
    fd: RawFd,
    pub uid: Rc<str>,
    /// Device label and permitted rooms from the token; most tokens name
    /// neither, and then nothing is allocated.
    extras: Option<Box<TokenExtras>>,
    pub connected_at_ms: u64,
    /// Allocated only while bytes wait for a full socket.
    out: RefCell<Option<Box<Outbound>>>,
    waker: Cell<Option<Waker>>,
    state: Cell<ChannelState>,
    pub last_seen_tick: Cell<u32>,
    pub last_ping_tick: Cell<u32>,
    /// (tick of the current rate window, client messages in it).
    pub rate_window: Cell<(u32, u32)>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.id)
            .field("uid", &self.uid)
            .field("state", &self.state.get())
            .finish_non_exhaustive()
    }
}

impl Channel {
    pub fn new(
        id: u64,
        fd: RawFd,
        uid: Rc<str>,
        extras: TokenExtras,
        connected_at_ms: u64,
        tick: u32,
    ) -> Self {
        Self {
            id,
            fd,
            uid,
            extras: (extras.device.is_some() || extras.permitted_rooms.is_some())
                .then(|| Box::new(extras)),
            connected_at_ms,
            out: RefCell::new(None),
            waker: Cell::new(None),
            state: Cell::new(ChannelState::Open),
            last_seen_tick: Cell::new(tick),
            last_ping_tick: Cell::new(tick),
            rate_window: Cell::new((tick, 0)),
        }
    }

    pub fn device(&self) -> Option<&str> {
        self.extras.as_ref()?.device.as_deref()
    }

    /// Whether the token allows a client `join` of `room`.
    pub fn permits(&self, room: &str) -> bool {
        self.extras
            .as_ref()
            .and_then(|e| e.permitted_rooms.as_ref())
            .is_some_and(|rooms| rooms.iter().any(|r| &**r == room))
    }

    pub fn state(&self) -> ChannelState {
        self.state.get()
    }

    pub fn is_open(&self) -> bool {
        self.state.get() == ChannelState::Open
    }

    /// Remembers the connection task's waker (called on every poll).
    pub fn set_waker(&self, waker: &Waker) {
        let current = self.waker.take();
        match current {
            Some(w) if w.will_wake(waker) => self.waker.set(Some(w)),
            _ => self.waker.set(Some(waker.clone())),
        }
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Hands one frame to the connection: straight to the socket when
    /// nothing is queued, else behind the queue within `caps`.
    pub fn send(&self, bytes: &Bytes, caps: QueueCaps) -> Sent {
        if !self.is_open() {
            return Sent::Dropped;
        }
        self.enqueue(bytes, Some(caps))
    }

    /// Like [`send`](Self::send) but past the caps and in any state but
    /// dead: for the few frames the node itself must get out (pong, the
    /// close frame).
    fn send_control(&self, bytes: &Bytes) {
        if !matches!(self.state.get(), ChannelState::Dead(_)) {
            self.enqueue(bytes, None);
        }
    }

    fn enqueue(&self, bytes: &Bytes, caps: Option<QueueCaps>) -> Sent {
        let mut slot = self.out.borrow_mut();
        if slot.is_none() {
            match send(
                self.fd,
                bytes,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(n) if n == bytes.len() => return Sent::Written,
                Ok(n) => {
                    *slot = Some(Box::new(Outbound {
                        frames: VecDeque::from([bytes.slice(n..)]),
                        bytes: bytes.len() - n,
                        front_started: true,
                    }));
                }
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {
                    *slot = Some(Box::new(Outbound {
                        frames: VecDeque::from([bytes.clone()]),
                        bytes: bytes.len(),
                        front_started: false,
                    }));
                }
                Err(_) => {
                    drop(slot);
                    self.kill(DisconnectReason::IoError);
                    return Sent::Dropped;
                }
            }
            drop(slot);
            self.wake();
            return Sent::Queued;
        }
        // Invariant: a present queue is never empty.
        let out = slot.as_mut().expect("checked above");
        if let Some(caps) = caps
            && (out.frames.len() >= caps.frames_max || out.bytes + bytes.len() > caps.bytes_max)
        {
            return Sent::Overflow;
        }
        out.frames.push_back(bytes.clone());
        out.bytes += bytes.len();
        Sent::Queued
    }

    /// Starts the closing handshake: queues a close frame for `reason`
    /// (after what is queued, or instead of it when `discard_queue`).
    pub fn close(&self, reason: DisconnectReason, tick: u32, discard_queue: bool) {
        if !self.is_open() {
            return;
        }
        self.state.set(ChannelState::Closing {
            reason,
            since_tick: tick,
        });
        if discard_queue {
            let mut slot = self.out.borrow_mut();
            if let Some(out) = slot.as_mut() {
                let keep = usize::from(out.front_started);
                out.frames.truncate(keep);
                out.bytes = out.frames.iter().map(Bytes::len).sum();
                if out.frames.is_empty() {
                    *slot = None;
                }
            }
        }
        self.send_control(&frame::close(reason.close_code(), reason.text()));
        self.wake();
    }

    /// Answers a client's close frame and marks the channel closing.
    pub fn close_echo(&self, code: Option<u16>, tick: u32) {
        if !self.is_open() {
            return;
        }
        self.state.set(ChannelState::Closing {
            reason: DisconnectReason::ClientClose,
            since_tick: tick,
        });
        let payload = code.map(u16::to_be_bytes);
        let bytes = frame::encode(
            tungstenite::protocol::frame::coding::OpCode::Control(
                tungstenite::protocol::frame::coding::Control::Close,
            ),
            payload.as_ref().map_or(&[][..], |p| &p[..]),
        );
        self.send_control(&bytes);
        self.wake();
    }

    /// Sends a control frame (pong, ping) that must not count as data.
    pub fn send_pong_or_ping(&self, bytes: &Bytes) {
        if self.is_open() {
            self.send_control(bytes);
        }
    }

    /// Ends the connection now (socket error, close grace over).
    pub fn kill(&self, reason: DisconnectReason) {
        let reason = match self.state.get() {
            ChannelState::Dead(_) => return,
            ChannelState::Closing { reason, .. } => reason,
            ChannelState::Open => reason,
        };
        self.state.set(ChannelState::Dead(reason));
        *self.out.borrow_mut() = None;
        self.wake();
    }

    /// Writes queued frames while the socket takes them. `Ready(Ok)` once
    /// the queue is empty.
    pub fn poll_flush(&self, cx: &mut Context<'_>, stream: &mut TcpStream) -> Poll<io::Result<()>> {
        let mut slot = self.out.borrow_mut();
        let Some(out) = slot.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while let Some(front) = out.frames.front_mut() {
            match Pin::new(&mut *stream).poll_write(cx, front) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    front.advance(n);
                    let done = front.is_empty();
                    out.bytes -= n;
                    if done {
                        out.frames.pop_front();
                        out.front_started = false;
                    } else {
                        out.front_started = true;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // Hold no queue memory while idle.
        *slot = None;
        Poll::Ready(Ok(()))
    }

    /// Whether the outbound queue is empty.
    pub fn flushed(&self) -> bool {
        self.out.borrow().is_none()
    }
}
