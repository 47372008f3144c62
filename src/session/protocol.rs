//! The client side of one WebSocket connection as a state machine with no
//! I/O: bytes in, [`Action`]s out. It owns what arrives in pieces (a frame
//! cut by a read boundary, a fragmented message), the failure state and the
//! client's message-rate window; the connection task
//! ([`crate::session::connection`]) reads the socket, feeds
//! [`Protocol::on_bytes`] and carries the actions out. Split this way (the
//! model is quinn-proto's `handle_*`/`poll_*`), every rule of the client
//! protocol is tested with byte literals, without sockets.
//!
//! In echo mode (`[ws] echo`, a conformance-test mode for loopback only)
//! every data message is answered with a copy of itself instead of being
//! parsed; every frame-level rule still holds.

use bytes::Bytes;
use smallvec::SmallVec;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::metrics::Limit;
use crate::session::disconnect::DisconnectReason;
use crate::ws::frame::{self, FrameError};
use crate::ws::message::{self, ClientMessage, MessageError, PONG_MESSAGE};

/// Actions one read usually produces, kept inline.
const ACTIONS_INLINE: usize = 4;

/// What the connection must do after a read.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this pong (the answer to a ping).
    Pong(Bytes),
    /// Echo mode: send this frame, a copy of the client's whole message
    /// (same type, one frame), within the send-queue caps.
    Echo(Bytes),
    /// The client asks to join a room (permission is the caller's check).
    Join(String),
    /// The client leaves a room.
    Leave(String),
    /// Answer the client with this fixed text message.
    Reply(&'static str),
    /// Answer the client with this error message.
    Reject(MessageError),
    /// The client started the closing handshake: echo its code.
    CloseEcho(Option<u16>),
    /// The client's close frame completed a closing handshake we started.
    ClientClosed,
    /// Start the closing handshake for `reason`. With `failed`, the input
    /// can no longer be framed (RFC 6455 section 7.1.7): the socket is shut
    /// as soon as the close frame is out, without waiting for the client.
    Close {
        reason: DisconnectReason,
        failed: bool,
    },
    /// A configured limit refused something: count it.
    Refused(Limit),
}

/// The actions of one read, in order.
pub type Actions = SmallVec<[Action; ACTIONS_INLINE]>;

/// The client limits the protocol enforces.
#[derive(Clone, Copy, Debug)]
pub struct ProtocolLimits {
    /// Largest client message, in bytes, fragments included.
    pub message_bytes_max: usize,
    /// Client messages per heartbeat tick (one second); twice this in one
    /// tick closes the connection.
    pub messages_per_tick_max: u32,
    /// Echo mode: data messages are echoed, neither parsed nor counted in
    /// the rate window (pings still are).
    pub echo: bool,
}

/// Bytes of a frame or message that arrived in pieces. Exists only while
/// a partial frame or a fragmented message is pending.
#[derive(Debug, Default)]
struct Partial {
    /// Undecoded bytes (a frame cut by the read boundary).
    pending: Vec<u8>,
    /// A fragmented data message being assembled.
    message: Option<Fragmented>,
    /// Text: bytes of the cut frame's payload (at the start of `pending`)
    /// known to be valid UTF-8, so that bad text fails as its bytes come
    /// in, not when the frame is whole.
    cut_utf8_checked: usize,
}

impl Partial {
    /// Checks the UTF-8 of a cut text frame's payload as far as it came,
    /// after what is unchecked of the message before it (at most an
    /// incomplete character); each payload byte is checked once, but for
    /// up to three of an incomplete character at the end.
    fn check_cut_text(&mut self, cut: &[u8]) -> Result<(), FrameError> {
        let Some(cut) = frame::cut_client_frame(cut) else {
            return Ok(());
        };
        let before: &[u8] = match (cut.opcode, &self.message) {
            (OpCode::Data(Data::Text), None) => &[],
            (OpCode::Data(Data::Continue), Some(message)) if message.is_text => {
                &message.body[message.utf8_checked..]
            }
            // Binary, control, or out of place (refused once whole).
            _ => return Ok(()),
        };
        let checked = self.cut_utf8_checked;
        let before = if checked == 0 { before } else { &[] };
        let mut text = Vec::with_capacity(before.len() + cut.payload.len() - checked);
        text.extend_from_slice(before);
        text.extend(
            cut.payload[checked..]
                .iter()
                .enumerate()
                .map(|(i, byte)| byte ^ cut.mask[(checked + i) & 3]),
        );
        let valid = match std::str::from_utf8(&text) {
            Ok(_) => text.len(),
            Err(e) if e.error_len().is_some() => return Err(FrameError::InvalidUtf8),
            Err(e) => e.valid_up_to(),
        };
        // `before` is an incomplete character: a valid prefix that is not
        // empty ends past it.
        self.cut_utf8_checked = checked + valid.saturating_sub(before.len());
        Ok(())
    }
}

/// The fragments of one data message received so far.
#[derive(Debug)]
struct Fragmented {
    is_text: bool,
    body: Vec<u8>,
    /// Text: `body[..utf8_checked]` is known to be valid UTF-8 (what
    /// follows is at most an incomplete character), so that each fragment
    /// is checked once, as it arrives, and bad text fails at the fragment
    /// that breaks it.
    utf8_checked: usize,
}

impl Fragmented {
    fn new(is_text: bool, payload: &[u8]) -> Result<Self, FrameError> {
        let mut message = Self {
            is_text,
            body: payload.to_vec(),
            utf8_checked: 0,
        };
        message.check_utf8()?;
        Ok(message)
    }

    /// Appends a continuation's payload and checks the text it completes.
    fn extend(&mut self, payload: &[u8]) -> Result<(), FrameError> {
        self.body.extend_from_slice(payload);
        self.check_utf8()
    }

    /// Fails on a byte that no continuation could make valid; an incomplete
    /// character at the end waits for the next fragment.
    fn check_utf8(&mut self) -> Result<(), FrameError> {
        if !self.is_text {
            return Ok(());
        }
        match std::str::from_utf8(&self.body[self.utf8_checked..]) {
            Ok(_) => self.utf8_checked = self.body.len(),
            Err(e) if e.error_len().is_some() => return Err(FrameError::InvalidUtf8),
            Err(e) => self.utf8_checked += e.valid_up_to(),
        }
        Ok(())
    }

    /// The last fragment is in: an incomplete character left is an error.
    fn finish(self) -> Result<(bool, Vec<u8>), FrameError> {
        if self.is_text && self.utf8_checked != self.body.len() {
            return Err(FrameError::InvalidUtf8);
        }
        Ok((self.is_text, self.body))
    }
}

/// What the connection does once its close frame is on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterClose {
    /// Shut the write side (FIN) and wait for the client's close or FIN.
    Shut,
    /// The client broke the protocol: shut the write side and end now.
    ShutAndEnd,
    /// Done already.
    AlreadyShut,
}

/// One connection's protocol state, packed: it lives in every idle
/// connection's task.
#[derive(Debug, Default)]
pub struct Protocol {
    partial: Option<Box<Partial>>,
    /// The low 16 bits of the current rate window's tick, and the client
    /// messages in it (saturating): a window 65,536 ticks (18 h) later
    /// that lands on the same low bits only continues a count.
    rate_window: (u16, u16),
    /// The client broke the protocol (see [`Action::Close`]).
    failed: bool,
    /// The write side is shut after the close frame.
    write_shut: bool,
}

impl Protocol {
    pub fn new(tick: u32) -> Self {
        Self {
            partial: None,
            rate_window: (tick as u16, 0),
            failed: false,
            write_shut: false,
        }
    }

    /// Whether the client broke the protocol.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// The close frame is on the wire: what to do with the socket.
    pub fn on_close_flushed(&mut self) -> AfterClose {
        if std::mem::replace(&mut self.write_shut, true) {
            AfterClose::AlreadyShut
        } else if self.failed {
            AfterClose::ShutAndEnd
        } else {
            AfterClose::Shut
        }
    }

    /// Decodes and handles every whole frame in `fresh` (after any pending
    /// bytes) and keeps a cut frame for the next read. `open`: whether the
    /// connection was open before these bytes (while it closes, only the
    /// client's close frame matters).
    pub fn on_bytes(
        &mut self,
        fresh: &mut [u8],
        tick: u32,
        open: bool,
        limits: &ProtocolLimits,
    ) -> Actions {
        let mut actions = Actions::new();
        if self.failed {
            return actions;
        }
        let mut pending = self
            .partial
            .as_mut()
            .map(|p| std::mem::take(&mut p.pending))
            .unwrap_or_default();
        let buffered = !pending.is_empty();
        let data: &mut [u8] = if buffered {
            pending.extend_from_slice(fresh);
            &mut pending
        } else {
            fresh
        };
        let mut open = open;
        let mut at = 0;
        while at < data.len() {
            match frame::decode_client_frame(&mut data[at..], limits.message_bytes_max) {
                Ok(Some((frame, used))) => {
                    at += used;
                    let before = actions.len();
                    let outcome = if open {
                        self.on_frame(frame.opcode, frame.is_final, frame.payload, tick, limits)
                    } else {
                        // Closing: the client's close frame completes the
                        // handshake; anything else it sends is dropped.
                        if frame.opcode == OpCode::Control(Control::Close) {
                            actions.push(Action::ClientClosed);
                            return actions;
                        }
                        Ok(Actions::new())
                    };
                    match outcome {
                        // Every ping gets its pong (Autobahn 2.10 asks for
                        // each); the channel keeps at most one pong waiting.
                        Ok(more) => actions.extend(more),
                        Err(error) => {
                            self.fail(error, &mut actions);
                            return actions;
                        }
                    }
                    if actions[before..]
                        .iter()
                        .any(|a| matches!(a, Action::CloseEcho(_) | Action::Close { .. }))
                    {
                        open = false;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    self.fail(error, &mut actions);
                    return actions;
                }
            }
        }
        if at == data.len() {
            if self.partial.as_ref().is_some_and(|p| p.message.is_none()) {
                self.partial = None;
            }
        } else {
            // A frame still cut: keep its bytes. Bytes that were buffered
            // already stay where they are (no copy per read, so a large
            // frame sent in small pieces costs linear time).
            let same_frame = buffered && at == 0;
            let rest = if buffered {
                pending.drain(..at);
                pending
            } else {
                data[at..].to_vec()
            };
            let partial = self.partial.get_or_insert_with(Box::default);
            if !same_frame {
                partial.cut_utf8_checked = 0;
            }
            if open && let Err(error) = partial.check_cut_text(&rest) {
                self.fail(error, &mut actions);
                return actions;
            }
            partial.pending = rest;
        }
        actions
    }

    fn fail(&mut self, error: FrameError, actions: &mut Actions) {
        let reason = DisconnectReason::from_frame_error(&error);
        if reason == DisconnectReason::MessageTooBig {
            actions.push(Action::Refused(Limit::ClientMessageBytes));
        }
        self.partial = None;
        self.failed = true;
        actions.push(Action::Close {
            reason,
            failed: true,
        });
    }

    fn on_frame(
        &mut self,
        opcode: OpCode,
        is_final: bool,
        payload: &[u8],
        tick: u32,
        limits: &ProtocolLimits,
    ) -> Result<Actions, FrameError> {
        let mut actions = Actions::new();
        match opcode {
            OpCode::Control(Control::Ping) => {
                if self.count_message(tick, limits, &mut actions) {
                    actions.push(Action::Pong(frame::encode(
                        OpCode::Control(Control::Pong),
                        payload,
                    )));
                }
            }
            OpCode::Control(Control::Pong) => {}
            OpCode::Control(Control::Close) => {
                actions.push(Action::CloseEcho(frame::parse_close(payload)?));
            }
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                return Err(FrameError::ReservedOpcode);
            }
            OpCode::Data(Data::Continue) => {
                let partial = self.partial.as_mut().ok_or(FrameError::BadFragment)?;
                let mut message = partial.message.take().ok_or(FrameError::BadFragment)?;
                let size = message.body.len() + payload.len();
                if size > limits.message_bytes_max {
                    return Err(FrameError::TooBig(size as u64));
                }
                message.extend(payload)?;
                if is_final {
                    let (is_text, body) = message.finish()?;
                    self.on_message(is_text, &body, tick, limits, &mut actions)?;
                } else {
                    self.partial.get_or_insert_with(Box::default).message = Some(message);
                }
            }
            OpCode::Data(kind) => {
                if self.partial.as_ref().is_some_and(|p| p.message.is_some()) {
                    return Err(FrameError::BadFragment);
                }
                let is_text = kind == Data::Text;
                if is_final {
                    if is_text && std::str::from_utf8(payload).is_err() {
                        return Err(FrameError::InvalidUtf8);
                    }
                    self.on_message(is_text, payload, tick, limits, &mut actions)?;
                } else {
                    let message = Fragmented::new(is_text, payload)?;
                    self.partial.get_or_insert_with(Box::default).message = Some(message);
                }
            }
        }
        Ok(actions)
    }

    /// Counts a client message or ping in this tick's rate window; `false`
    /// when it is over the limit and must be dropped (warned once, closed
    /// at twice the limit).
    fn count_message(&mut self, tick: u32, limits: &ProtocolLimits, actions: &mut Actions) -> bool {
        let limit = limits.messages_per_tick_max;
        let (window, count) = self.rate_window;
        let count = if window == tick as u16 {
            count.saturating_add(1)
        } else {
            1
        };
        self.rate_window = (tick as u16, count);
        let count = u32::from(count);
        if count > limit.saturating_mul(2) {
            actions.push(Action::Refused(Limit::ClientMessageRate));
            actions.push(Action::Close {
                reason: DisconnectReason::RateLimited,
                failed: false,
            });
            return false;
        }
        if count > limit {
            actions.push(Action::Refused(Limit::ClientMessageRate));
            if count == limit + 1 {
                actions.push(Action::Reject(MessageError::RateLimited));
            }
            return false;
        }
        true
    }

    /// A whole client message (text already checked as UTF-8): echoed in
    /// echo mode; else rate-limited, then join/leave or an error.
    fn on_message(
        &mut self,
        is_text: bool,
        body: &[u8],
        tick: u32,
        limits: &ProtocolLimits,
        actions: &mut Actions,
    ) -> Result<(), FrameError> {
        if limits.echo {
            let kind = if is_text { Data::Text } else { Data::Binary };
            actions.push(Action::Echo(frame::encode(OpCode::Data(kind), body)));
            return Ok(());
        }
        if !self.count_message(tick, limits, actions) {
            return Ok(());
        }
        if !is_text {
            actions.push(Action::Reject(MessageError::Binary));
            return Ok(());
        }
        actions.push(match message::parse(body) {
            Ok(ClientMessage::Join(room)) => Action::Join(room),
            Ok(ClientMessage::Leave(room)) => Action::Leave(room),
            Ok(ClientMessage::Ping) => Action::Reply(PONG_MESSAGE),
            Err(error) => Action::Reject(error),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ProtocolLimits = ProtocolLimits {
        message_bytes_max: 64,
        messages_per_tick_max: 3,
        echo: false,
    };

    const ECHO: ProtocolLimits = ProtocolLimits {
        echo: true,
        ..LIMITS
    };

    /// A masked client frame (payload under 126 bytes).
    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11u8, 0x22, 0x33, 0x44];
        assert!(payload.len() < 126);
        let mut out = vec![first, 0x80 | payload.len() as u8];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    const TEXT: u8 = 0x81;
    const TEXT_FIRST: u8 = 0x01;
    const CONTINUE_LAST: u8 = 0x80;
    const BINARY: u8 = 0x82;
    const CLOSE: u8 = 0x88;
    const PING: u8 = 0x89;
    const PONG: u8 = 0x8A;

    fn feed(protocol: &mut Protocol, bytes: &[u8], open: bool) -> Vec<Action> {
        let mut bytes = bytes.to_vec();
        protocol
            .on_bytes(&mut bytes, 0, open, &LIMITS)
            .into_iter()
            .collect()
    }

    #[test]
    fn join_and_leave_become_actions() {
        let mut p = Protocol::new(0);
        let mut bytes = masked(TEXT, br#"{"type":"join","room":"lobby"}"#);
        bytes.extend(masked(TEXT, br#"{"type":"leave","room":"lobby"}"#));
        assert_eq!(
            feed(&mut p, &bytes, true),
            vec![Action::Join("lobby".into()), Action::Leave("lobby".into())]
        );
        assert!(!p.failed());
    }

    #[test]
    fn ping_is_answered_with_a_pong_of_the_same_payload() {
        let mut p = Protocol::new(0);
        let actions = feed(&mut p, &masked(PING, b"hi"), true);
        assert_eq!(
            actions,
            vec![Action::Pong(Bytes::from_static(b"\x8a\x02hi"))]
        );
        assert!(feed(&mut p, &masked(PONG, b""), true).is_empty());
    }

    #[test]
    fn a_frame_cut_by_the_read_boundary_waits_for_the_rest() {
        let mut p = Protocol::new(0);
        let whole = masked(TEXT, br#"{"type":"join","room":"a"}"#);
        let (head, tail) = whole.split_at(5);
        assert!(feed(&mut p, head, true).is_empty());
        assert_eq!(feed(&mut p, tail, true), vec![Action::Join("a".into())]);
        assert!(
            p.partial.is_none(),
            "nothing is held once the frame is whole"
        );
    }

    #[test]
    fn fragments_are_assembled() {
        let mut p = Protocol::new(0);
        assert!(feed(&mut p, &masked(TEXT_FIRST, br#"{"type":"join","#), true).is_empty());
        let actions = feed(&mut p, &masked(CONTINUE_LAST, br#""room":"b"}"#), true);
        assert_eq!(actions, vec![Action::Join("b".into())]);
        assert!(p.partial.is_none());
    }

    #[test]
    fn a_continuation_without_a_first_fragment_fails_the_connection() {
        let mut p = Protocol::new(0);
        let actions = feed(&mut p, &masked(CONTINUE_LAST, b"x"), true);
        assert_eq!(
            actions,
            vec![Action::Close {
                reason: DisconnectReason::ProtocolError,
                failed: true
            }]
        );
        assert!(p.failed());
        assert!(
            feed(&mut p, &masked(PING, b""), true).is_empty(),
            "a failed protocol reads no more"
        );
    }

    #[test]
    fn fragments_past_the_message_cap_are_refused() {
        let mut p = Protocol::new(0);
        assert!(feed(&mut p, &masked(TEXT_FIRST, &[b'a'; 40]), true).is_empty());
        let actions = feed(&mut p, &masked(CONTINUE_LAST, &[b'a'; 40]), true);
        assert_eq!(
            actions,
            vec![
                Action::Refused(Limit::ClientMessageBytes),
                Action::Close {
                    reason: DisconnectReason::MessageTooBig,
                    failed: true
                }
            ]
        );
    }

    #[test]
    fn invalid_utf8_in_a_text_message_fails_with_1007() {
        let mut p = Protocol::new(0);
        let actions = feed(&mut p, &masked(TEXT, &[0xff, 0xfe]), true);
        assert_eq!(
            actions,
            vec![Action::Close {
                reason: DisconnectReason::InvalidUtf8,
                failed: true
            }]
        );
    }

    #[test]
    fn an_unmasked_frame_fails_the_connection() {
        let mut p = Protocol::new(0);
        let actions = feed(&mut p, b"\x81\x01a", true);
        assert!(matches!(actions[..], [Action::Close { failed: true, .. }]));
    }

    #[test]
    fn binary_and_unknown_messages_are_rejected_not_fatal() {
        let mut p = Protocol::new(0);
        let mut bytes = masked(BINARY, b"\x00");
        bytes.extend(masked(TEXT, br#"{"type":"dance"}"#));
        assert_eq!(
            feed(&mut p, &bytes, true),
            vec![
                Action::Reject(MessageError::Binary),
                Action::Reject(MessageError::UnknownType)
            ]
        );
        assert!(!p.failed());
    }

    #[test]
    fn the_rate_window_warns_once_then_closes_at_twice_the_limit() {
        let mut p = Protocol::new(0);
        let join = masked(TEXT, br#"{"type":"join","room":"r"}"#);
        let bytes: Vec<u8> = std::iter::repeat_n(join, 7).flatten().collect();
        let actions = feed(&mut p, &bytes, true);
        let joins = actions
            .iter()
            .filter(|a| matches!(a, Action::Join(_)))
            .count();
        assert_eq!(joins, 3, "the limit is 3 per tick");
        assert_eq!(
            actions[3..],
            [
                Action::Refused(Limit::ClientMessageRate),
                Action::Reject(MessageError::RateLimited),
                Action::Refused(Limit::ClientMessageRate),
                Action::Refused(Limit::ClientMessageRate),
                Action::Refused(Limit::ClientMessageRate),
                Action::Close {
                    reason: DisconnectReason::RateLimited,
                    failed: false
                }
            ]
        );
        // A new tick opens a new window (the connection is closing here, so
        // a fresh protocol shows it).
        let mut q = Protocol::new(0);
        let three: Vec<u8> =
            std::iter::repeat_n(masked(TEXT, br#"{"type":"leave","room":"r"}"#), 3)
                .flatten()
                .collect();
        let mut copy = three.clone();
        assert_eq!(q.on_bytes(&mut copy, 0, true, &LIMITS).len(), 3);
        let mut copy = three.clone();
        let next_tick = q.on_bytes(&mut copy, 1, true, &LIMITS);
        assert!(next_tick.iter().all(|a| matches!(a, Action::Leave(_))));
    }

    #[test]
    fn the_clients_close_is_echoed_and_later_frames_are_dropped() {
        let mut p = Protocol::new(0);
        let mut bytes = masked(CLOSE, &1000u16.to_be_bytes());
        bytes.extend(masked(TEXT, br#"{"type":"join","room":"late"}"#));
        assert_eq!(
            feed(&mut p, &bytes, true),
            vec![Action::CloseEcho(Some(1000))]
        );
    }

    #[test]
    fn while_closing_only_the_clients_close_frame_counts() {
        let mut p = Protocol::new(0);
        let mut bytes = masked(PING, b"");
        bytes.extend(masked(TEXT, br#"{"type":"join","room":"x"}"#));
        bytes.extend(masked(CLOSE, b""));
        bytes.extend(masked(PING, b""));
        assert_eq!(feed(&mut p, &bytes, false), vec![Action::ClientClosed]);
    }

    #[test]
    fn every_ping_of_a_read_is_answered_in_order() {
        // The channel keeps at most one pong waiting (RFC 6455 5.5.3); the
        // protocol answers each ping, as Autobahn case 2.10 asks.
        let mut p = Protocol::new(0);
        let mut bytes = masked(PING, b"1");
        bytes.extend(masked(PING, b"2"));
        bytes.extend(masked(PING, b"3"));
        assert_eq!(
            feed(&mut p, &bytes, true),
            vec![
                Action::Pong(Bytes::from_static(b"\x8a\x011")),
                Action::Pong(Bytes::from_static(b"\x8a\x012")),
                Action::Pong(Bytes::from_static(b"\x8a\x013")),
            ]
        );
    }

    #[test]
    fn pings_count_in_the_rate_window_and_a_flood_is_closed() {
        let mut p = Protocol::new(0);
        let bytes: Vec<u8> = (0..100).flat_map(|_| masked(PING, b"")).collect();
        let actions = feed(&mut p, &bytes, true);
        let pongs = actions
            .iter()
            .filter(|a| matches!(a, Action::Pong(_)))
            .count();
        assert_eq!(
            pongs, LIMITS.messages_per_tick_max as usize,
            "pongs up to the rate limit: {actions:?}"
        );
        assert_eq!(
            actions.last(),
            Some(&Action::Close {
                reason: DisconnectReason::RateLimited,
                failed: false
            }),
            "twice the limit of pings in one tick closes"
        );
        assert_eq!(
            actions
                .iter()
                .filter(|a| matches!(a, Action::Refused(Limit::ClientMessageRate)))
                .count(),
            LIMITS.messages_per_tick_max as usize + 1,
            "each ping over the limit is counted until the close"
        );
    }

    #[test]
    fn the_socket_is_shut_once_after_the_close_frame() {
        let mut p = Protocol::new(0);
        assert_eq!(p.on_close_flushed(), AfterClose::Shut);
        assert_eq!(p.on_close_flushed(), AfterClose::AlreadyShut);
        let mut failed = Protocol::new(0);
        feed(&mut failed, b"\x81\x01a", true);
        assert_eq!(failed.on_close_flushed(), AfterClose::ShutAndEnd);
    }

    const CONTINUE: u8 = 0x00;

    fn feed_echo(protocol: &mut Protocol, bytes: &[u8]) -> Vec<Action> {
        let mut bytes = bytes.to_vec();
        protocol
            .on_bytes(&mut bytes, 0, true, &ECHO)
            .into_iter()
            .collect()
    }

    #[test]
    fn echo_mode_answers_text_and_binary_with_their_copy() {
        let mut p = Protocol::new(0);
        let mut bytes = masked(TEXT, b"hi");
        bytes.extend(masked(BINARY, b"\x00\xff"));
        bytes.extend(masked(TEXT, b""));
        assert_eq!(
            feed_echo(&mut p, &bytes),
            vec![
                Action::Echo(Bytes::from_static(b"\x81\x02hi")),
                Action::Echo(Bytes::from_static(b"\x82\x02\x00\xff")),
                Action::Echo(Bytes::from_static(b"\x81\x00")),
            ]
        );
    }

    #[test]
    fn echo_mode_neither_parses_nor_rate_limits_data_messages() {
        let mut p = Protocol::new(0);
        let join = masked(TEXT, br#"{"type":"join","room":"r"}"#);
        let bytes: Vec<u8> = std::iter::repeat_n(join, 10).flatten().collect();
        let actions = feed_echo(&mut p, &bytes);
        assert_eq!(
            actions.len(),
            10,
            "10 messages over a limit of 3: {actions:?}"
        );
        assert!(actions.iter().all(
            |a| matches!(a, Action::Echo(frame) if &frame[2..] == br#"{"type":"join","room":"r"}"#)
        ));
    }

    #[test]
    fn echo_mode_still_rate_limits_pings() {
        let mut p = Protocol::new(0);
        let bytes: Vec<u8> = (0..7).flat_map(|_| masked(PING, b"")).collect();
        let actions = feed_echo(&mut p, &bytes);
        assert_eq!(
            actions.last(),
            Some(&Action::Close {
                reason: DisconnectReason::RateLimited,
                failed: false
            })
        );
    }

    #[test]
    fn echo_mode_sends_a_fragmented_message_back_whole_after_an_interleaved_ping() {
        let mut p = Protocol::new(0);
        let mut bytes = masked(TEXT_FIRST, b"he");
        bytes.extend(masked(PING, b"p"));
        bytes.extend(masked(CONTINUE, b"l"));
        bytes.extend(masked(CONTINUE_LAST, b"lo"));
        assert_eq!(
            feed_echo(&mut p, &bytes),
            vec![
                Action::Pong(Bytes::from_static(b"\x8a\x01p")),
                Action::Echo(Bytes::from_static(b"\x81\x05hello")),
            ]
        );
        assert!(p.partial.is_none());
        let mut bytes = masked(0x02, b"\x01");
        bytes.extend(masked(CONTINUE_LAST, b"\x02"));
        assert_eq!(
            feed_echo(&mut p, &bytes),
            vec![Action::Echo(Bytes::from_static(b"\x82\x02\x01\x02"))]
        );
    }

    #[test]
    fn echo_mode_keeps_every_frame_rule() {
        let failed = |reason| {
            vec![Action::Close {
                reason,
                failed: true,
            }]
        };
        let mut rsv = masked(TEXT, b"x");
        rsv[0] |= 0x20;
        let cases: [(&str, Vec<u8>, Vec<Action>); 6] = [
            (
                "unmasked",
                b"\x81\x01a".to_vec(),
                failed(DisconnectReason::ProtocolError),
            ),
            ("rsv bit", rsv, failed(DisconnectReason::ProtocolError)),
            (
                "reserved opcode",
                masked(0x83, b""),
                failed(DisconnectReason::ProtocolError),
            ),
            (
                "bad utf-8",
                masked(TEXT, b"\xc3\x28"),
                failed(DisconnectReason::InvalidUtf8),
            ),
            (
                "continuation first",
                masked(CONTINUE_LAST, b"x"),
                failed(DisconnectReason::ProtocolError),
            ),
            (
                "over the message cap",
                masked(BINARY, &[0; 65]),
                vec![
                    Action::Refused(Limit::ClientMessageBytes),
                    Action::Close {
                        reason: DisconnectReason::MessageTooBig,
                        failed: true,
                    },
                ],
            ),
        ];
        for (what, bytes, want) in cases {
            let mut p = Protocol::new(0);
            assert_eq!(feed_echo(&mut p, &bytes), want, "{what}");
            assert!(p.failed(), "{what}");
        }
        // A text frame inside a fragmented message breaks it.
        let mut p = Protocol::new(0);
        let mut bytes = masked(TEXT_FIRST, b"a");
        bytes.extend(masked(TEXT, b"b"));
        assert_eq!(
            feed_echo(&mut p, &bytes),
            failed(DisconnectReason::ProtocolError)
        );
    }

    #[test]
    fn a_character_split_between_fragments_is_valid_text() {
        let mut p = Protocol::new(0);
        let mut bytes = masked(TEXT_FIRST, b"a\xc3");
        bytes.extend(masked(CONTINUE_LAST, b"\xa9"));
        assert_eq!(
            feed_echo(&mut p, &bytes),
            vec![Action::Echo(Bytes::from_static(b"\x81\x03a\xc3\xa9"))]
        );
    }

    #[test]
    fn bad_text_fails_at_the_fragment_that_breaks_it() {
        // Autobahn 6.4.1: the second fragment holds a code point past
        // U+10FFFF; the connection fails before the last fragment comes.
        let mut p = Protocol::new(0);
        let first = masked(TEXT_FIRST, b"\xce\xba\xe1\xbd\xb9");
        assert!(feed_echo(&mut p, &first).is_empty());
        let second = masked(CONTINUE, b"\xf4\x90\x80\x80");
        assert_eq!(
            feed_echo(&mut p, &second),
            vec![Action::Close {
                reason: DisconnectReason::InvalidUtf8,
                failed: true
            }]
        );
    }

    #[test]
    fn a_message_ending_inside_a_character_is_bad_text() {
        let mut p = Protocol::new(0);
        let mut bytes = masked(TEXT_FIRST, b"a");
        bytes.extend(masked(CONTINUE_LAST, b"\xc3"));
        assert_eq!(
            feed(&mut p, &bytes, true),
            vec![Action::Close {
                reason: DisconnectReason::InvalidUtf8,
                failed: true
            }]
        );
    }

    #[test]
    fn a_close_code_that_may_not_be_sent_fails_with_1002() {
        for code in [0u16, 999, 1005, 1006, 1015, 2000, 5000] {
            let mut p = Protocol::new(0);
            assert_eq!(
                feed(&mut p, &masked(CLOSE, &code.to_be_bytes()), true),
                vec![Action::Close {
                    reason: DisconnectReason::ProtocolError,
                    failed: true
                }],
                "{code}"
            );
        }
        let mut p = Protocol::new(0);
        assert_eq!(
            feed(&mut p, &masked(CLOSE, &3000u16.to_be_bytes()), true),
            vec![Action::CloseEcho(Some(3000))]
        );
    }

    #[test]
    fn bad_text_fails_as_soon_as_its_bytes_arrive_in_a_cut_frame() {
        // Autobahn 6.4.3: one frame in three pieces; the second holds a
        // code point past U+10FFFF.
        let mut p = Protocol::new(0);
        let frame = masked(TEXT, b"\xce\xba\xe1\xbd\xb9\xf4\x90\x80\x80edited");
        let (first, rest) = frame.split_at(6 + 5);
        let (second, _third) = rest.split_at(4);
        assert!(feed_echo(&mut p, first).is_empty());
        assert_eq!(
            feed_echo(&mut p, second),
            vec![Action::Close {
                reason: DisconnectReason::InvalidUtf8,
                failed: true
            }]
        );
        // The same in a continuation, after a fragment that ends inside a
        // character whose next byte is bad.
        let mut p = Protocol::new(0);
        let mut bytes = masked(TEXT_FIRST, b"a\xe1");
        let continuation = masked(CONTINUE_LAST, b"\xbd\x28rest");
        bytes.extend_from_slice(&continuation[..6 + 2]);
        assert_eq!(
            feed_echo(&mut p, &bytes),
            vec![Action::Close {
                reason: DisconnectReason::InvalidUtf8,
                failed: true
            }]
        );
    }

    #[test]
    fn good_text_cut_anywhere_is_echoed_whole() {
        let text = "κόσμε – ok 🦀".as_bytes();
        let mut frames = masked(TEXT_FIRST, &text[..3]);
        frames.extend(masked(CONTINUE_LAST, &text[3..]));
        for cut in 1..frames.len() {
            let mut p = Protocol::new(0);
            let mut actions = feed_echo(&mut p, &frames[..cut]);
            actions.extend(feed_echo(&mut p, &frames[cut..]));
            let mut want = vec![0x81, text.len() as u8];
            want.extend_from_slice(text);
            assert_eq!(
                actions,
                vec![Action::Echo(Bytes::from(want))],
                "cut at {cut}"
            );
        }
        // Byte by byte too.
        let mut p = Protocol::new(0);
        let mut actions = Vec::new();
        for byte in &frames {
            actions.extend(feed_echo(&mut p, std::slice::from_ref(byte)));
        }
        assert!(matches!(&actions[..], [Action::Echo(_)]), "{actions:?}");
    }

    #[test]
    fn a_frame_sent_byte_by_byte_is_decoded_once_whole() {
        let mut p = Protocol::new(0);
        let whole = masked(BINARY, &[7; 60]);
        let mut actions = Vec::new();
        for byte in &whole {
            actions.extend(feed_echo(&mut p, std::slice::from_ref(byte)));
        }
        let mut want = vec![0x82, 60];
        want.extend_from_slice(&[7; 60]);
        assert_eq!(actions, vec![Action::Echo(Bytes::from(want))]);
        assert!(p.partial.is_none());
    }

    #[test]
    fn protocol_state_stays_small() {
        // It lives in every idle connection: a box pointer, 4 bytes of rate
        // window and two flags.
        assert_eq!(std::mem::size_of::<Protocol>(), 16);
    }

    #[test]
    fn an_application_ping_is_answered_with_a_pong_message() {
        let mut p = Protocol::new(0);
        let actions = feed(&mut p, &masked(TEXT, br#"{"type":"ping"}"#), true);
        assert_eq!(actions, vec![Action::Reply(r#"{"type":"pong"}"#)]);
    }
}
