//! The client side of RFC 6455 without sockets: the upgrade request and answer check, and a
//! frame reader fed with byte slices. tungstenite's frame types do the header work; the state
//! kept per connection is a pending-bytes buffer (normally empty) and a fragment buffer.

use std::io::Cursor;

use base64::Engine;
use sha1::{Digest, Sha1};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

use crate::error::{ConnectError, FrameError};
use crate::limits::{FRAME_PAYLOAD_BYTES_MAX, HANDSHAKE_RESPONSE_BYTES_MAX};

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Pending bytes above this capacity are released once the buffer drains.
const PENDING_KEEP_CAPACITY_BYTES: usize = 4_096;

/// A fresh random `Sec-WebSocket-Key`.
pub fn new_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>())
}

/// The `Sec-WebSocket-Accept` a server must answer for `key`.
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The upgrade request for `path` (with query) on `host`.
pub fn upgrade_request(host: &str, path: &str, key: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Checks the upgrade answer in `buf`. `Ok(None)`: need more bytes; `Ok(Some(n))`: the first
/// `n` bytes were the answer, anything after is already frame data.
pub fn parse_upgrade_response(buf: &[u8], key: &str) -> Result<Option<usize>, ConnectError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= HANDSHAKE_RESPONSE_BYTES_MAX => {
            return Err(ConnectError::BadHandshake("answer too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ConnectError::BadHandshake("malformed answer")),
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(ConnectError::Status(code));
    }
    let accept = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
        .ok_or(ConnectError::BadHandshake("no accept header"))?;
    if accept.value != accept_key(key).as_bytes() {
        return Err(ConnectError::BadHandshake("wrong accept key"));
    }
    Ok(Some(n))
}

/// What one server frame (or reassembled message) means to the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text or binary message.
    Message(&'a [u8]),
    /// A ping; the client answers with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// The server closed, with its close code if it sent one.
    Close(Option<u16>),
}

/// Incremental frame reader of one connection.
#[derive(Default)]
pub struct FrameReader {
    pending: Vec<u8>,
    fragment: Vec<u8>,
    in_fragment: bool,
}

impl FrameReader {
    /// Feeds newly read bytes; calls `on` for every complete event, in order.
    pub fn feed(&mut self, data: &[u8], mut on: impl FnMut(Event<'_>)) -> Result<(), FrameError> {
        if self.pending.is_empty() {
            let used = parse_frames(data, &mut self.fragment, &mut self.in_fragment, &mut on)?;
            self.pending.extend_from_slice(&data[used..]);
        } else {
            let mut pending = std::mem::take(&mut self.pending);
            pending.extend_from_slice(data);
            let used = parse_frames(&pending, &mut self.fragment, &mut self.in_fragment, &mut on)?;
            pending.drain(..used);
            if pending.is_empty() && pending.capacity() > PENDING_KEEP_CAPACITY_BYTES {
                pending = Vec::new();
            }
            self.pending = pending;
        }
        Ok(())
    }
}

fn parse_frames(
    buf: &[u8],
    fragment: &mut Vec<u8>,
    in_fragment: &mut bool,
    on: &mut impl FnMut(Event<'_>),
) -> Result<usize, FrameError> {
    let mut used = 0usize;
    loop {
        let mut cursor = Cursor::new(&buf[used..]);
        let Some((header, len)) =
            FrameHeader::parse(&mut cursor).map_err(|e| FrameError::Bad(e.to_string()))?
        else {
            return Ok(used);
        };
        if header.mask.is_some() {
            return Err(FrameError::Masked);
        }
        if len > FRAME_PAYLOAD_BYTES_MAX as u64 {
            return Err(FrameError::TooLarge(len));
        }
        let start = used + cursor.position() as usize;
        let end = start + len as usize;
        if end > buf.len() {
            return Ok(used);
        }
        let payload = &buf[start..end];
        used = end;
        match header.opcode {
            OpCode::Data(Data::Continue) => {
                if !*in_fragment {
                    return Err(FrameError::Bad("continuation without start".into()));
                }
                if fragment.len() + payload.len() > FRAME_PAYLOAD_BYTES_MAX {
                    return Err(FrameError::TooLarge(
                        (fragment.len() + payload.len()) as u64,
                    ));
                }
                fragment.extend_from_slice(payload);
                if header.is_final {
                    on(Event::Message(fragment));
                    *fragment = Vec::new();
                    *in_fragment = false;
                }
            }
            OpCode::Data(_) if header.is_final => on(Event::Message(payload)),
            OpCode::Data(_) => {
                *in_fragment = true;
                fragment.clear();
                fragment.extend_from_slice(payload);
            }
            OpCode::Control(Control::Ping) => on(Event::Ping(payload)),
            OpCode::Control(Control::Pong) => {}
            OpCode::Control(Control::Close) => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                on(Event::Close(code));
            }
            OpCode::Control(_) => return Err(FrameError::Bad("reserved control opcode".into())),
        }
    }
}

/// A masked pong answering a ping with `payload`.
pub fn pong_frame(payload: &[u8]) -> Vec<u8> {
    masked(Frame::pong(payload.to_vec()))
}

/// A masked close frame with code 1000.
pub fn close_frame() -> Vec<u8> {
    masked(Frame::close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    })))
}

fn masked(mut frame: Frame) -> Vec<u8> {
    frame.header_mut().mask = Some(rand::random());
    let mut out = Vec::with_capacity(frame.len());
    frame
        .format(&mut out)
        .expect("writing to a Vec cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmasked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![opcode, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn upgrade_answer_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x00";
        assert_eq!(parse_upgrade_response(ok, key).unwrap(), Some(ok.len() - 2));
        assert_eq!(parse_upgrade_response(&ok[..20], key).unwrap(), None);
        let denied = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(
            parse_upgrade_response(denied, key),
            Err(ConnectError::Status(401))
        ));
    }

    #[test]
    fn reader_splits_and_joins_frames() {
        let mut bytes = unmasked(0x81, b"hello");
        bytes.extend(unmasked(0x89, b"p"));
        bytes.extend(unmasked(0x01, b"ab"));
        bytes.extend(unmasked(0x80, b"cd"));
        bytes.extend(unmasked(0x88, &[0x03, 0xe9]));
        let mut reader = FrameReader::default();
        let mut seen = Vec::new();
        for chunk in bytes.chunks(3) {
            reader
                .feed(chunk, |e| {
                    seen.push(match e {
                        Event::Message(m) => format!("m:{}", String::from_utf8_lossy(m)),
                        Event::Ping(p) => format!("p:{}", String::from_utf8_lossy(p)),
                        Event::Close(c) => format!("c:{c:?}"),
                    })
                })
                .unwrap();
        }
        assert_eq!(seen, ["m:hello", "p:p", "m:abcd", "c:Some(1001)"]);
        assert!(reader.pending.is_empty());
    }

    #[test]
    fn masked_server_frame_refused() {
        let mut reader = FrameReader::default();
        let bytes = [0x81, 0x80, 1, 2, 3, 4];
        assert!(matches!(
            reader.feed(&bytes, |_| {}),
            Err(FrameError::Masked)
        ));
    }

    #[test]
    fn pong_is_masked() {
        let f = pong_frame(b"xy");
        assert_eq!(f[0], 0x8a);
        assert_eq!(f[1], 0x80 | 2);
        assert_eq!(f.len(), 2 + 4 + 2);
    }
}
