//! WebSocket frames with no sockets: server frames encoded once into shared
//! bytes, client frames decoded from a byte slice.
//!
//! A push is turned into one complete frame (header and payload) here, once,
//! and the same [`Bytes`] is written to every recipient. Client frames are
//! parsed with tungstenite's [`FrameHeader`] and checked against RFC 6455:
//! masked, no reserved bits or opcodes, control frames short and final.

use std::io::Cursor;

use bytes::{BufMut, Bytes, BytesMut};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::limits::FRAME_HEADER_BYTES_MAX;

/// Largest payload of a control frame (RFC 6455 section 5.5).
pub const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

/// WebSocket close codes corecast sends; the numbers are part of the client
/// contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    Normal = 1000,
    GoingAway = 1001,
    Protocol = 1002,
    Unsupported = 1003,
    InvalidPayload = 1007,
    Policy = 1008,
    TooBig = 1009,
    Error = 1011,
    TryAgainLater = 1013,
    Replaced = 4001,
    Disconnected = 4002,
    TokenExpired = 4003,
    TokenInvalid = 4004,
}

/// Builds a server (unmasked) frame: header and payload in one buffer.
pub fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(FRAME_HEADER_BYTES_MAX + payload.len());
    put_header(&mut out, opcode, payload.len());
    out.put_slice(payload);
    out.freeze()
}

fn put_header(out: &mut BytesMut, opcode: OpCode, len: usize) {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let mut writer = out.writer();
    header
        .format(len as u64, &mut writer)
        .expect("writing a frame header to memory cannot fail");
}

/// A close frame with a code and a short reason (truncated to fit 125 bytes).
pub fn close(code: CloseCode, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(CONTROL_PAYLOAD_BYTES_MAX);
    payload.extend_from_slice(&(code as u16).to_be_bytes());
    let mut end = reason.len().min(CONTROL_PAYLOAD_BYTES_MAX - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OpCode::Control(Control::Close), &payload)
}

/// What a push carries and how it is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub enum ContentKind {
    /// Raw JSON text: becomes `"data": <json>` in a text frame.
    Json,
    /// UTF-8 text: becomes `"data": "<text>"` in a text frame.
    Text,
    /// Raw bytes: sent as the whole payload of a binary frame.
    Binary,
}

/// Encodes a push for one core's recipients, with `pos`, the core's stream
/// position after it (DESIGN section 3.1). A text or JSON push is one text
/// frame `{"type":"push","id","pos","room"?,"data"}`; a binary push is a
/// text frame `{"type":"binary","id","pos","room"?}` followed by the binary
/// frame with the raw bytes, in one buffer (so the pair is written
/// together and a client can tell the id and position of the bytes).
pub fn encode_push(
    id: &str,
    room: Option<&str>,
    kind: ContentKind,
    payload: &[u8],
    pos: &str,
) -> Bytes {
    // The JSON is written once, after room for the largest server header;
    // the header is then put right before it and the unused room sliced
    // off, so the frame costs one allocation and no copy of the payload.
    const HEADROOM: usize = 10;
    let binary_tail = if kind == ContentKind::Binary {
        FRAME_HEADER_BYTES_MAX + payload.len()
    } else {
        0
    };
    let mut out =
        BytesMut::with_capacity(HEADROOM + payload.len() + id.len() + pos.len() + 72 + binary_tail);
    out.put_bytes(0, HEADROOM);
    let mut json = out.writer();
    let opening: &[u8] = if kind == ContentKind::Binary {
        br#"{"type":"binary","id":"#
    } else {
        br#"{"type":"push","id":"#
    };
    json.get_mut().put_slice(opening);
    write_json_string(&mut json, id);
    json.get_mut().put_slice(br#","pos":"#);
    write_json_string(&mut json, pos);
    if let Some(room) = room {
        json.get_mut().put_slice(br#","room":"#);
        write_json_string(&mut json, room);
    }
    match kind {
        ContentKind::Json => {
            json.get_mut().put_slice(br#","data":"#);
            json.get_mut().put_slice(payload);
        }
        ContentKind::Text => {
            json.get_mut().put_slice(br#","data":"#);
            write_json_string(&mut json, std::str::from_utf8(payload).unwrap_or_default());
        }
        ContentKind::Binary => {}
    }
    json.get_mut().put_u8(b'}');
    let mut out = json.into_inner();
    let body_len = out.len() - HEADROOM;
    let mut header = [0u8; HEADROOM];
    let header_len = {
        let mut cursor = std::io::Cursor::new(&mut header[..]);
        FrameHeader {
            opcode: OpCode::Data(Data::Text),
            ..FrameHeader::default()
        }
        .format(body_len as u64, &mut cursor)
        .expect("a server frame header fits in 10 bytes");
        cursor.position() as usize
    };
    let start = HEADROOM - header_len;
    out[start..HEADROOM].copy_from_slice(&header[..header_len]);
    if kind == ContentKind::Binary {
        put_header(&mut out, OpCode::Data(Data::Binary), payload.len());
        out.put_slice(payload);
    }
    out.freeze().slice(start..)
}

/// Encodes a small JSON control message for one client (errors, acks).
pub fn encode_text(text: &str) -> Bytes {
    encode(OpCode::Data(Data::Text), text.as_bytes())
}

fn write_json_string(out: &mut impl std::io::Write, s: &str) {
    serde_json::to_writer(out, s).expect("writing a JSON string to memory cannot fail");
}

/// A client frame that breaks the protocol; each maps to a close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("client frame is not masked")]
    Unmasked,
    #[error("reserved bits set")]
    ReservedBits,
    #[error("reserved opcode")]
    ReservedOpcode,
    #[error("fragmented or oversize control frame")]
    BadControl,
    #[error("frame of {0} bytes is over the limit")]
    TooBig(u64),
    #[error("unexpected continuation or interleaved data frame")]
    BadFragment,
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    #[error("close code {0} may not be sent by an endpoint (RFC 6455 section 7.4)")]
    BadCloseCode(u16),
    #[error("malformed frame header")]
    Malformed,
}

impl FrameError {
    pub fn close_code(&self) -> CloseCode {
        match self {
            FrameError::TooBig(_) => CloseCode::TooBig,
            FrameError::InvalidUtf8 => CloseCode::InvalidPayload,
            _ => CloseCode::Protocol,
        }
    }
}

/// One decoded client frame; `payload` is already unmasked.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientFrame<'a> {
    pub opcode: OpCode,
    pub is_final: bool,
    pub payload: &'a [u8],
}

/// Decodes the first frame of `buf` in place (unmasking its payload).
/// Returns the frame and the bytes it took, or `None` when `buf` does not
/// hold a whole frame yet. `max_payload` bounds a data frame's payload.
pub fn decode_client_frame(
    buf: &mut [u8],
    max_payload: usize,
) -> Result<Option<(ClientFrame<'_>, usize)>, FrameError> {
    let mut cursor = Cursor::new(&buf[..]);
    let (header, len) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(tungstenite::Error::Protocol(tungstenite::error::ProtocolError::InvalidOpcode(_))) => {
            return Err(FrameError::ReservedOpcode);
        }
        Err(_) => return Err(FrameError::Malformed),
    };
    let header_len = cursor.position() as usize;
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(FrameError::ReservedBits);
    }
    let Some(mask) = header.mask else {
        return Err(FrameError::Unmasked);
    };
    match header.opcode {
        OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
            return Err(FrameError::ReservedOpcode);
        }
        OpCode::Control(_) => {
            if !header.is_final || len > CONTROL_PAYLOAD_BYTES_MAX as u64 {
                return Err(FrameError::BadControl);
            }
        }
        OpCode::Data(_) => {
            if len > max_payload as u64 {
                return Err(FrameError::TooBig(len));
            }
        }
    }
    let len = len as usize;
    let total = header_len + len;
    if buf.len() < total {
        return Ok(None);
    }
    let payload = &mut buf[header_len..total];
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
    Ok(Some((
        ClientFrame {
            opcode: header.opcode,
            is_final: header.is_final,
            payload,
        },
        total,
    )))
}

/// The start of a client frame whose payload has not all arrived.
#[derive(Debug, PartialEq, Eq)]
pub struct CutFrame<'a> {
    pub opcode: OpCode,
    pub mask: [u8; 4],
    /// The payload bytes so far, still masked.
    pub payload: &'a [u8],
}

/// The frame at the start of `buf` when its header is whole but its
/// payload is not (what [`decode_client_frame`] answers `None` for once
/// the header is in); `None` otherwise.
pub fn cut_client_frame(buf: &[u8]) -> Option<CutFrame<'_>> {
    let mut cursor = Cursor::new(buf);
    let (header, len) = FrameHeader::parse(&mut cursor).ok()??;
    let header_len = cursor.position() as usize;
    let payload = &buf[header_len..];
    ((payload.len() as u64) < len).then_some(CutFrame {
        opcode: header.opcode,
        mask: header.mask?,
        payload,
    })
}

/// Whether a peer may send `code` in a close frame (RFC 6455 section 7.4):
/// the codes defined in 7.4.1 and registered with IANA (1000-1003,
/// 1007-1014), and the ranges for libraries (3000-3999) and applications
/// (4000-4999). Refused: 0-999, 1004 (reserved), 1005, 1006 and 1015 (never
/// on the wire), unassigned 1016-2999, and 5000 and up.
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Splits a close frame payload into code and reason; a code a peer may
/// not send is [`FrameError::BadCloseCode`] (close 1002).
pub fn parse_close(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(FrameError::Malformed),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !valid_close_code(code) {
                return Err(FrameError::BadCloseCode(code));
            }
            std::str::from_utf8(&payload[2..]).map_err(|_| FrameError::InvalidUtf8)?;
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        assert!(payload.len() < 126);
        out.push(0x80 | payload.len() as u8);
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    #[test]
    fn push_frame_is_one_text_frame() {
        let frame = encode_push(
            "m1",
            Some("lobby"),
            ContentKind::Json,
            br#"{"a":1}"#,
            "p.1.2",
        );
        assert_eq!(frame[0], 0x81);
        let body = &frame[2..];
        assert_eq!(frame[1] as usize, body.len());
        let value: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(value["type"], "push");
        assert_eq!(value["id"], "m1");
        assert_eq!(value["room"], "lobby");
        assert_eq!(value["data"]["a"], 1);
        assert_eq!(value["pos"], "p.1.2");
    }

    #[test]
    fn text_push_escapes() {
        let frame = encode_push(
            "m\"2",
            None,
            ContentKind::Text,
            "he said \"hi\"\n".as_bytes(),
            "",
        );
        let value: serde_json::Value = serde_json::from_slice(&frame[2..]).unwrap();
        assert_eq!(value["data"], "he said \"hi\"\n");
        assert_eq!(value["id"], "m\"2");
        assert!(value.get("room").is_none());
    }

    #[test]
    fn push_header_fits_every_length() {
        for len in [0usize, 100, 125, 126, 1_000, 65_535, 65_536, 200_000] {
            let data = format!("\"{}\"", "x".repeat(len));
            let frame = encode_push("id", None, ContentKind::Json, data.as_bytes(), "a.0.1");
            let mut cursor = Cursor::new(&frame[..]);
            let (header, body_len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final && header.mask.is_none());
            assert_eq!(cursor.position() as usize + body_len as usize, frame.len());
            let value: serde_json::Value =
                serde_json::from_slice(&frame[cursor.position() as usize..]).unwrap();
            assert_eq!(value["data"].as_str().unwrap().len(), len);
        }
    }

    #[test]
    fn a_binary_push_is_a_header_then_the_raw_bytes() {
        let frame = encode_push("m", Some("r"), ContentKind::Binary, &[0, 1, 2], "a.0.1");
        let mut cursor = Cursor::new(&frame[..]);
        let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        assert_eq!(header.opcode, OpCode::Data(Data::Text));
        let at = cursor.position() as usize;
        let value: serde_json::Value =
            serde_json::from_slice(&frame[at..at + len as usize]).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"type": "binary", "id": "m", "pos": "a.0.1", "room": "r"})
        );
        assert_eq!(&frame[at + len as usize..], &[0x82, 3, 0, 1, 2]);
    }

    #[test]
    fn long_payload_uses_extended_length() {
        let frame = encode(OpCode::Data(Data::Binary), &vec![7u8; 70_000]);
        assert_eq!(frame[1], 127);
        assert_eq!(frame.len(), 10 + 70_000);
    }

    #[test]
    fn decodes_masked_text_and_reports_length() {
        let mut bytes = masked(0x1, true, b"hello");
        bytes.extend_from_slice(&masked(0x9, true, b""));
        let (frame, used) = decode_client_frame(&mut bytes, 1024).unwrap().unwrap();
        assert_eq!(frame.payload, b"hello");
        assert_eq!(frame.opcode, OpCode::Data(Data::Text));
        assert_eq!(used, 2 + 4 + 5);
    }

    #[test]
    fn partial_frame_waits() {
        let mut bytes = masked(0x1, true, b"hello");
        bytes.truncate(8);
        assert_eq!(decode_client_frame(&mut bytes, 1024).unwrap(), None);
        assert_eq!(decode_client_frame(&mut [0x81], 1024).unwrap(), None);
    }

    #[test]
    fn protocol_violations() {
        let mut unmasked = vec![0x81, 0x01, b'x'];
        assert_eq!(
            decode_client_frame(&mut unmasked, 1024).unwrap_err(),
            FrameError::Unmasked
        );
        let mut reserved = masked(0x3, true, b"");
        assert_eq!(
            decode_client_frame(&mut reserved, 1024).unwrap_err(),
            FrameError::ReservedOpcode
        );
        let mut rsv = masked(0x1, true, b"");
        rsv[0] |= 0x40;
        assert_eq!(
            decode_client_frame(&mut rsv, 1024).unwrap_err(),
            FrameError::ReservedBits
        );
        let mut fragmented_ping = masked(0x9, false, b"");
        assert_eq!(
            decode_client_frame(&mut fragmented_ping, 1024).unwrap_err(),
            FrameError::BadControl
        );
        let mut big = masked(0x2, true, &[0u8; 100]);
        assert_eq!(
            decode_client_frame(&mut big, 10).unwrap_err().close_code(),
            CloseCode::TooBig
        );
    }

    #[test]
    fn a_cut_frame_shows_its_header_and_payload_so_far() {
        let whole = masked(0x1, true, b"hello");
        let cut = cut_client_frame(&whole[..8]).expect("cut after 2 payload bytes");
        assert_eq!(cut.opcode, OpCode::Data(Data::Text));
        assert_eq!(cut.mask, [1, 2, 3, 4]);
        assert_eq!(cut.payload, &whole[6..8]);
        assert_eq!(cut_client_frame(&whole), None, "a whole frame is not cut");
        assert_eq!(cut_client_frame(&whole[..1]), None, "no header yet");
    }

    #[test]
    fn close_codes_per_rfc_6455_section_7_4() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
        ] {
            assert!(valid_close_code(code), "{code}");
        }
        for code in [3000, 3999, 4000, 4001, 4999] {
            assert!(valid_close_code(code), "{code}");
        }
        for code in [
            0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!valid_close_code(code), "{code}");
            let payload = [&code.to_be_bytes()[..], b"bye"].concat();
            let error = parse_close(&payload).unwrap_err();
            assert_eq!(error, FrameError::BadCloseCode(code));
            assert_eq!(error.close_code(), CloseCode::Protocol);
        }
        assert_eq!(parse_close(&[0x03, 0xe8]), Ok(Some(1000)));
        assert_eq!(parse_close(&[0x0f, 0xa1, b'o', b'k']), Ok(Some(4001)));
        assert_eq!(parse_close(&[]), Ok(None));
        assert_eq!(parse_close(&[0x03]), Err(FrameError::Malformed));
        assert_eq!(
            parse_close(&[0x03, 0xe8, 0xff]),
            Err(FrameError::InvalidUtf8)
        );
    }

    #[test]
    fn close_frame_reason_is_truncated_on_char_boundary() {
        let reason = "é".repeat(100);
        let frame = close(CloseCode::Policy, &reason);
        assert!(frame.len() <= 2 + CONTROL_PAYLOAD_BYTES_MAX);
        assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), 1008);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
    }
}
