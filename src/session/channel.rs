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
use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, send};

use crate::node::Slot;
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
    /// Frames taken off the front since this queue was made: with it, a
    /// frame's position stays valid as the front is written.
    popped: u64,
    /// The position of the one queued pong whose writing has not started.
    pong: Option<u64>,
}

impl Outbound {
    fn new(front: Bytes, front_started: bool) -> Box<Self> {
        Box::new(Self {
            bytes: front.len(),
            frames: VecDeque::from([front]),
            front_started,
            popped: 0,
            pong: None,
        })
    }

    /// The index of the queued pong that may still be replaced.
    fn replaceable_pong(&self) -> Option<usize> {
        let at = usize::try_from(self.pong?.checked_sub(self.popped)?).ok()?;
        let started = at == 0 && self.front_started;
        (at < self.frames.len() && !started).then_some(at)
    }

    fn pop_front(&mut self) {
        self.frames.pop_front();
        self.front_started = false;
        self.popped += 1;
    }
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
    /// When the connection's token expires, Unix seconds: the heartbeat
    /// wheel closes it with 4003 then (`u32::MAX`: never).
    pub expires_at_s: u32,
    /// The node's connection slot, released when the channel is dropped
    /// (held here, not in the task, because the channel's allocation has
    /// room for it in the same malloc size class).
    pub slot: Option<Slot>,
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
            expires_at_s: u32::MAX,
            slot: None,
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

    /// Queues a resume's frames (replayed pushes, then `resumed`) past the
    /// caps: their bytes are the history's, shared, and a replay holds at
    /// most [`crate::history::store::REPLAY_PUSHES_MAX`] of them.
    pub fn send_replay(&self, bytes: &Bytes) {
        if self.is_open() {
            self.enqueue(bytes, None);
        }
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
                Ok(n) => *slot = Some(Outbound::new(bytes.slice(n..), true)),
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {
                    *slot = Some(Outbound::new(bytes.clone(), false));
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
                // A kept front is being written; nothing queued is a pong.
                out.pong = None;
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

    /// Sends the server's ping (the heartbeat wheel's, one per interval).
    pub fn send_ping(&self, bytes: &Bytes) {
        if self.is_open() {
            self.send_control(bytes);
        }
    }

    /// Answers a client's ping. At most one pong waits in the queue: a
    /// newer one replaces it (RFC 6455 section 5.5.3 lets a server answer
    /// only the latest ping), so pings from a client that does not read
    /// cannot grow the queue.
    pub fn send_pong(&self, pong: &Bytes) {
        if !self.is_open() {
            return;
        }
        let mut slot = self.out.borrow_mut();
        if let Some(out) = slot.as_mut() {
            if let Some(at) = out.replaceable_pong() {
                out.bytes = out.bytes - out.frames[at].len() + pong.len();
                out.frames[at] = pong.clone();
            } else {
                out.pong = Some(out.popped + out.frames.len() as u64);
                out.frames.push_back(pong.clone());
                out.bytes += pong.len();
            }
            return;
        }
        drop(slot);
        if self.enqueue(pong, None) == Sent::Queued {
            let mut slot = self.out.borrow_mut();
            if let Some(out) = slot.as_mut() {
                // The pong is the queue's only frame, maybe partly written.
                out.pong = Some(out.popped);
            }
        }
    }

    /// Whether the outbound queue is at or over `caps`: the connection
    /// stops reading the client until it drains.
    pub fn over(&self, caps: QueueCaps) -> bool {
        self.out
            .borrow()
            .as_ref()
            .is_some_and(|out| out.frames.len() >= caps.frames_max || out.bytes >= caps.bytes_max)
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
    pub fn poll_flush<S: AsyncWrite + Unpin>(
        &self,
        cx: &mut Context<'_>,
        stream: &mut S,
    ) -> Poll<io::Result<()>> {
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
                        out.pop_front();
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

#[cfg(test)]
mod tests {
    //! A channel over a real socket pair whose send buffer is small, so the
    //! kernel pushes back after a few frames: Written -> Queued -> Overflow,
    //! then the slow-consumer close keeps a partly written front frame ahead
    //! of the close frame and drops the rest of the queue.

    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
    use std::os::unix::net::UnixStream;

    use nix::sys::socket::{setsockopt, sockopt};

    use super::*;

    /// The smallest send buffer we ask for (the kernel doubles it).
    const SMALL_SNDBUF_BYTES: usize = 4096;

    /// Frame size above half the send buffer (8 KiB once doubled), so
    /// that a send is split in two chunks: Linux takes the first frame
    /// whole and the first 4,032 bytes of the second (seen with a Python
    /// socketpair probe on Linux 6.18), which leaves a started front frame.
    const FRAME_BYTES: usize = 5000;

    const CAPS: QueueCaps = QueueCaps {
        frames_max: 4,
        bytes_max: 1 << 20,
    };

    /// Frame `i`: `FRAME_BYTES` of one letter, so order shows on the wire.
    fn frame(i: usize) -> Bytes {
        Bytes::from(vec![b'a' + (i % 26) as u8; FRAME_BYTES])
    }

    fn small_pair() -> (UnixStream, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        setsockopt(&ours, sockopt::SndBuf, &SMALL_SNDBUF_BYTES).expect("SO_SNDBUF");
        (ours, theirs)
    }

    fn channel_on(fd: RawFd) -> Channel {
        Channel::new(1, fd, Rc::from("u"), TokenExtras::default(), 0, 0)
    }

    /// Sends frames until the queue overflows; returns each outcome.
    fn fill(channel: &Channel) -> Vec<Sent> {
        let mut outcomes = Vec::new();
        for i in 0..64 {
            let sent = channel.send(&frame(i), CAPS);
            outcomes.push(sent);
            if sent == Sent::Overflow {
                break;
            }
        }
        outcomes
    }

    /// Flushes the channel's queue to `fd` on a glommio executor, then
    /// closes our end so that the reader sees EOF.
    fn flush_and_close(channel: Channel, fd: RawFd) {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(256 * 1024)
            .make()
            .expect("executor");
        ex.run(async move {
            // SAFETY: the fd is ours alone from here on.
            let mut stream = unsafe { glommio::net::UnixStream::from_raw_fd(fd) };
            futures_lite::future::poll_fn(|cx| channel.poll_flush(cx, &mut stream))
                .await
                .expect("flush");
            assert!(channel.flushed(), "no queue is held once flushed");
        });
    }

    /// Flushes `channel` (over `ours`) to the end and returns every byte
    /// the peer `theirs` read until our end closed.
    fn flush_to_peer(channel: Channel, ours: UnixStream, mut theirs: UnixStream) -> Vec<u8> {
        let reader = std::thread::spawn(move || {
            let mut received = Vec::new();
            theirs.read_to_end(&mut received).expect("read");
            received
        });
        flush_and_close(channel, ours.into_raw_fd());
        reader.join().expect("reader")
    }

    #[test]
    fn a_full_socket_queues_then_overflows_at_the_frame_cap() {
        let (ours, _theirs) = small_pair();
        let channel = channel_on(ours.as_raw_fd());
        let outcomes = fill(&channel);
        let written = outcomes.iter().take_while(|s| **s == Sent::Written).count();
        assert!(
            written >= 1,
            "an empty socket takes the first frame: {outcomes:?}"
        );
        assert_eq!(
            outcomes[written..],
            [
                Sent::Queued,
                Sent::Queued,
                Sent::Queued,
                Sent::Queued,
                Sent::Overflow
            ],
            "queued up to frames_max ({}), then overflow",
            CAPS.frames_max
        );
        assert!(!channel.flushed());
    }

    #[test]
    fn the_byte_cap_overflows_before_the_frame_cap() {
        let (ours, _theirs) = small_pair();
        let channel = channel_on(ours.as_raw_fd());
        let caps = QueueCaps {
            frames_max: 100,
            bytes_max: FRAME_BYTES * 2,
        };
        let mut outcomes = Vec::new();
        for i in 0..64 {
            let sent = channel.send(&frame(i), caps);
            outcomes.push(sent);
            if sent == Sent::Overflow {
                break;
            }
        }
        let queued = outcomes.iter().filter(|s| **s == Sent::Queued).count();
        assert!(
            (1..=2).contains(&queued),
            "two frames' bytes at most: {outcomes:?}"
        );
        assert_eq!(outcomes.last(), Some(&Sent::Overflow));
    }

    #[test]
    fn a_slow_consumer_close_keeps_the_started_front_frame_then_1013() {
        let (ours, theirs) = small_pair();
        let channel = channel_on(ours.as_raw_fd());
        let outcomes = fill(&channel);
        let written = outcomes.iter().take_while(|s| **s == Sent::Written).count();
        let front_started = channel
            .out
            .borrow()
            .as_ref()
            .expect("a queue after overflow")
            .front_started;
        assert!(
            front_started,
            "the kernel took part of a frame: {outcomes:?}"
        );
        channel.close(DisconnectReason::SlowConsumer, 0, true);
        assert!(!channel.is_open());
        assert_eq!(
            channel.send(&frame(99), CAPS),
            Sent::Dropped,
            "closing takes no data"
        );
        {
            let out = channel.out.borrow();
            let out = out.as_ref().expect("the close frame is queued");
            assert_eq!(out.frames.len(), usize::from(front_started) + 1);
        }

        let received = flush_to_peer(channel, ours, theirs);

        let mut expected: Vec<u8> = (0..written).flat_map(|i| frame(i).to_vec()).collect();
        if front_started {
            // The frame the kernel took part of is finished, whole.
            expected.extend_from_slice(&frame(written));
        }
        let close = frame::close(
            DisconnectReason::SlowConsumer.close_code(),
            DisconnectReason::SlowConsumer.text(),
        );
        expected.extend_from_slice(&close);
        assert_eq!(received.len(), expected.len());
        assert!(
            received == expected,
            "whole frames in order, then the close"
        );
        assert_eq!(&close[2..4], &1013u16.to_be_bytes(), "close code 1013");
    }

    fn pong(payload: &[u8]) -> Bytes {
        frame::encode(
            tungstenite::protocol::frame::coding::OpCode::Control(
                tungstenite::protocol::frame::coding::Control::Pong,
            ),
            payload,
        )
    }

    #[test]
    fn at_most_one_pong_waits_and_it_answers_the_latest_ping() {
        let (ours, theirs) = small_pair();
        let channel = channel_on(ours.as_raw_fd());
        let outcomes = fill(&channel);
        let written = outcomes.iter().take_while(|s| **s == Sent::Written).count();
        let queued_bytes = |c: &Channel| c.out.borrow().as_ref().map_or(0, |o| o.bytes);
        let frames = |c: &Channel| c.out.borrow().as_ref().map_or(0, |o| o.frames.len());
        let (bytes_before, frames_before) = (queued_bytes(&channel), frames(&channel));
        for i in 0..10_000u32 {
            channel.send_pong(&pong(&i.to_be_bytes()));
        }
        assert_eq!(
            frames(&channel),
            frames_before + 1,
            "one pong queued, not 10,000"
        );
        assert_eq!(queued_bytes(&channel), bytes_before + pong(b"1234").len());
        assert!(
            channel.over(CAPS),
            "the queue is at its cap: the task stops reading"
        );

        let received = flush_to_peer(channel, ours, theirs);
        let last = pong(&9_999u32.to_be_bytes());
        assert!(
            received.ends_with(&last),
            "the pong answers the latest ping"
        );
        let data_frames = written + CAPS.frames_max;
        assert_eq!(received.len(), data_frames * FRAME_BYTES + last.len());
    }
}
